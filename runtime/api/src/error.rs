//! The body of every error the daemon's API answers: the HTTP status says the class, `code` the
//! failure in a word, `exit_code` what `lifeboat` exits with for the same failure.

use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `usage` (a bad request: bad JSON, an unknown field or value), `unauthorized`,
    /// `not-found`, `invalid` (the plan does not validate), `failed` (refused or failed: an open
    /// run, a run in the wrong state, a missing point), `damaged`, `fenced`, `busy` (another
    /// writer holds a group's lease), `internal`.
    pub code: String,
    /// What `lifeboat` exits with for the same failure.
    pub exit_code: u8,
    pub message: String,
    /// Every problem, for `invalid`: `file:line:column: error[rule]: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}
