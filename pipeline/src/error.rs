//! The engine's error type: configuration problems (exit 2) and run failures (exit 1), with the
//! stage, row and file they concern.
//!
//! Errors from the libraries stages use (ONNX Runtime, Polars, Parquet, tokenizers) keep their
//! source error ([`Error::External`], and `Error::Sql` with the `sql` feature), and what was
//! being done when one happened is added as a chain of [`Context`]s (`.row(id)`, `.file(path)`,
//! `.key(key)`, `.doing(..)` from [`ResultExt`]), in the way of DataFusion's `Context`: the
//! message a user sees reads from the outside in (``stage `gen`: 16 rows `r0` ... `r15`:
//! unet.onnx: <the cause>``), and
//! `std::error::Error::source` walks the same chain down to the library's own error.

use std::fmt;
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
    /// An error from a library a stage uses, kept as it came; its message is the library's own.
    #[error("{source}")]
    External {
        /// The library, for logs and for code that tells errors apart ("ONNX Runtime").
        library: &'static str,
        /// Its error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A SQL query (Polars) failed; the message is Polars' own, on one line.
    #[cfg(feature = "sql")]
    #[error("SQL: {}", one_line(&.source.to_string()))]
    Sql {
        /// Polars' error.
        source: polars::prelude::PolarsError,
    },
    /// What was being done when `source` happened: a row, a file, a key.
    #[error("{context}: {source}")]
    Context {
        /// Where or on what.
        context: Context,
        /// The cause.
        source: Box<Error>,
    },
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
    /// A failure a stage describes in its own words (a model output of the wrong shape, a plugin
    /// that broke the protocol). Errors that come from a library use [`Error::External`].
    #[error("{0}")]
    Message(String),
}

/// What an error happened on, for the chain a user reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// One row, by id.
    Row(String),
    /// Several rows: the first and the last id, and how many.
    Rows {
        /// The first id.
        first: String,
        /// The last id.
        last: String,
        /// How many rows.
        count: usize,
    },
    /// A file (a model, a table, an image).
    File(PathBuf),
    /// A key of the stage's table.
    Key(String),
    /// Anything else, in words ("input `pixels`").
    Doing(String),
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Context::Row(id) => write!(f, "row `{id}`"),
            Context::Rows { first, count: 1, .. } => write!(f, "row `{first}`"),
            Context::Rows { first, last, count } => write!(f, "{count} rows `{first}` ... `{last}`"),
            Context::File(path) => write!(f, "{}", path.display()),
            Context::Key(key) => write!(f, "`{key}`"),
            Context::Doing(what) => f.write_str(what),
        }
    }
}

/// Adds context to the error of a `Result`.
pub trait ResultExt<T> {
    /// The error happened on row `id`.
    fn row(self, id: &str) -> Result<T>;
    /// The error happened on the rows of `ids` (named by the first and last).
    fn rows(self, ids: &arrow::array::StringArray) -> Result<T>;
    /// The error happened on file `path`.
    fn file(self, path: impl Into<PathBuf>) -> Result<T>;
    /// The error concerns key `key`.
    fn key(self, key: &str) -> Result<T>;
    /// The error happened while doing `what` (computed only on error).
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn row(self, id: &str) -> Result<T> {
        self.map_err(|e| e.into().context(Context::Row(id.to_string())))
    }

    fn rows(self, ids: &arrow::array::StringArray) -> Result<T> {
        self.map_err(|e| {
            use arrow::array::Array;
            let at = |i: usize| if ids.is_valid(i) { ids.value(i).to_string() } else { "<null>".to_string() };
            let count = ids.len();
            match count {
                0 => e.into(),
                _ => e.into().context(Context::Rows { first: at(0), last: at(count - 1), count }),
            }
        })
    }

    fn file(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| e.into().context(Context::File(path.into())))
    }

    fn key(self, key: &str) -> Result<T> {
        self.map_err(|e| e.into().context(Context::Key(key.to_string())))
    }

    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into().context(Context::Doing(what())))
    }
}

/// A library's message on one line (Polars spreads its messages over several).
#[cfg(feature = "sql")]
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Error {
    /// An error said in words.
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Message(message.into())
    }

    /// An error from `library`, kept with its source.
    pub fn external(library: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::External { library, source: source.into() }
    }

    /// Adds what this error happened on. Configuration errors and diagnostics stay as they are
    /// (they are located in the pipeline file already).
    pub fn context(self, context: Context) -> Self {
        match self {
            e @ (Error::Invalid(_) | Error::Config { .. } | Error::Interrupted | Error::Disconnected) => e,
            e => Error::Context { context, source: Box::new(e) },
        }
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

    /// The innermost error, past stage wrappers and context.
    pub fn root(&self) -> &Error {
        match self {
            Error::InStage { source, .. } | Error::Context { source, .. } => source.root(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the library's own words")]
    struct LibraryError;

    #[test]
    fn context_reads_from_the_outside_in_and_keeps_the_source() {
        let r: Result<()> = Err(Error::external("test", LibraryError));
        let e = r.file("models/unet.onnx").row("r7").unwrap_err().in_stage("gen");
        assert_eq!(e.to_string(), "stage `gen`: row `r7`: models/unet.onnx: the library's own words");
        // The chain of sources ends at the library's error, as it was.
        let mut at: &dyn std::error::Error = &e;
        while let Some(next) = at.source() {
            at = next;
        }
        assert!(at.downcast_ref::<LibraryError>().is_some(), "{at}");
        assert!(matches!(e.root(), Error::External { library: "test", .. }));
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn rows_are_named_by_the_first_and_last() {
        let ids = arrow::array::StringArray::from(vec!["a", "b", "c"]);
        let r: Result<()> = Err(Error::msg("bad"));
        assert_eq!(r.rows(&ids).unwrap_err().to_string(), "3 rows `a` ... `c`: bad");
        let one = arrow::array::StringArray::from(vec!["a"]);
        let r: Result<()> = Err(Error::msg("bad"));
        assert_eq!(r.rows(&one).unwrap_err().to_string(), "row `a`: bad");
    }

    #[test]
    fn configuration_errors_keep_their_place() {
        let r: Result<()> = Err(Error::config("steps", "too many"));
        assert!(matches!(r.row("x").unwrap_err(), Error::Config { .. }));
    }
}
