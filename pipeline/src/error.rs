//! The engine's error type: configuration problems (exit 2) and run failures (exit 1), with the
//! stage, row and file they concern.

use std::path::PathBuf;

use crate::diag::Diagnostic;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file or a flag is invalid; already located in the source.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// A stage's configuration is invalid; the engine locates it at `key` in the stage's table.
    #[error("{message}")]
    Config {
        /// The stage key at fault, when one is.
        key: Option<String>,
        /// What is wrong.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// One item (row, file) failed and `on_error` is "fail".
    #[error("row `{row}`: {reason}")]
    Item {
        /// The row id (or, for a file-level failure, the file).
        row: String,
        /// Why it failed.
        reason: String,
    },
    /// More items were rejected than `max_rejects` allows.
    #[error(
        "{count} rejected rows exceed max_rejects = {max} (see {path}); raise [pipeline] max_rejects, \
         or set it to -1 for no limit"
    )]
    TooManyRejects {
        /// Rejected so far.
        count: u64,
        /// The limit.
        max: i64,
        /// Where the rejects were written.
        path: PathBuf,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An Arrow error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The run was interrupted (Ctrl-C); stages stop emitting and flush what finished.
    #[error("interrupted")]
    Interrupted,
    /// A downstream stage stopped, so there is nobody to send to; not a failure of this stage.
    #[error("downstream stage stopped")]
    Disconnected,
    /// An error in a stage, with its id.
    #[error("stage `{stage}`: {source}")]
    InStage {
        /// The stage id.
        stage: String,
        /// The cause.
        source: Box<Error>,
    },
    /// Anything else, said in words.
    #[error("{0}")]
    Message(String),
}

impl Error {
    /// An error said in words.
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Message(message.into())
    }

    /// A configuration error at a stage key.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { key: Some(key.into()), message: message.into(), hint: None }
    }

    /// Adds a hint to a configuration error; other errors are returned unchanged.
    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        match self {
            Error::Config { key, message, .. } => Error::Config { key, message, hint: Some(hint.into()) },
            other => other,
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Wraps with the stage id (once).
    pub fn in_stage(self, stage: &str) -> Self {
        match self {
            e @ (Error::InStage { .. } | Error::Invalid(_)) => e,
            e => Error::InStage { stage: stage.to_string(), source: Box::new(e) },
        }
    }

    /// The innermost error, past stage wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::InStage { source, .. } => source.root(),
            e => e,
        }
    }

    /// The process exit code this error calls for: 2 for an invalid pipeline, 130 for Ctrl-C, else 1.
    pub fn exit_code(&self) -> i32 {
        match self.root() {
            Error::Invalid(_) | Error::Config { .. } => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Error::Invalid(Box::new(d))
    }
}
