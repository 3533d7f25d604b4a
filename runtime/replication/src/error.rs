//! One error type for the engine. Its kind tells the CLI which exit code to use; its message is
//! written for the person running the command and names the object, file or tool involved.

use std::fmt;

/// What went wrong, coarsely: the CLI maps each kind to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A store, a disk image, a quiesce command or a tool failed, or input was wrong.
    Failed,
    /// An object of the repository is missing or does not hash to its name: data is damaged.
    Damaged,
    /// Another writer owns the group (a newer epoch, or it committed the same point first).
    Fenced,
    /// Another writer holds the group's lease now (a daemon, a `replicate`): try again later.
    Busy,
}

/// An engine error: a kind and a message that names what failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn failed(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.to_string(),
        }
    }

    pub fn damaged(object: impl fmt::Display, what: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Damaged,
            message: format!("damaged object `{object}`: {what}"),
        }
    }

    pub fn fenced(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Fenced,
            message: message.to_string(),
        }
    }

    pub fn busy(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Busy,
            message: message.to_string(),
        }
    }

    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        Self::failed(format!("{what}: {err}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Adds context in front of the message, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
