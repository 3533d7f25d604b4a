//! The API's errors: JSON with the HTTP status, a stable `code` and the exit code the CLI gives
//! for the same failure (`lifeboat_orchestrator::exit_codes`), so a script handles both alike.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lifeboat_api::error::{ErrorBody, ErrorDetail};
use lifeboat_api::exit_codes;

/// An error answered to an API client.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub exit_code: u8,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, exit_code: u8, message: String) -> Self {
        Self {
            status,
            code,
            exit_code,
            message,
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "usage",
            exit_codes::USAGE,
            message.into(),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            exit_codes::USAGE,
            "a bearer token is required: `Authorization: Bearer TOKEN`".into(),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            exit_codes::FAILED,
            message.into(),
        )
    }

    /// No such plan file: what `lifeboat` exits 3 for (a plan it cannot validate).
    pub fn no_plan(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            exit_codes::INVALID,
            message.into(),
        )
    }

    pub fn invalid(message: impl Into<String>, details: Vec<String>) -> Self {
        Self {
            details,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                exit_codes::INVALID,
                message.into(),
            )
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "failed",
            exit_codes::FAILED,
            message.into(),
        )
    }

    /// Another writer holds a group's lease (the CLI's exit 8).
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "busy",
            exit_codes::BUSY,
            message.into(),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            exit_codes::INTERNAL,
            message.into(),
        )
    }

    /// An orchestrator error: the exit code the CLI gives for it; 404 for an unknown run, 500
    /// for a journal that cannot be read, 409 for every refusal and failure.
    pub fn of_run(e: &lifeboat_orchestrator::error::Error) -> Self {
        use lifeboat_orchestrator::error::Error;
        let exit_code = e.exit_code();
        let status = match e {
            Error::NoRun { .. } => StatusCode::NOT_FOUND,
            Error::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::CONFLICT,
        };
        let code = match e {
            Error::NoRun { .. } => "not-found",
            _ => exit_codes::name(exit_code),
        };
        Self::new(status, code, exit_code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                exit_code: self.exit_code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
