//! The pipe engine: reads `pipeline.toml`, resolves plugins from an explicit [`Registry`], checks the
//! whole graph's schemas before any data moves, and runs the stages on threads joined by bounded
//! channels, with Arrow record batches as the one currency between them.
//!
//! Stage crates depend on this crate only: they implement [`Plugin`] and [`Stage`], read their
//! params with [`Params::parse`], report per-item failures with [`StageContext::reject`], and
//! write files through [`AtomicFile`].

pub mod atomic;
pub mod cli;
pub mod columns;
pub mod config;
pub mod diag;
pub mod docs;
pub mod error;
pub mod onnx;
pub mod panics;
pub mod params;
pub mod plan;
pub mod plugin;
pub mod progress;
pub mod registry;
pub mod rejects;
pub mod report;
pub mod rng;
pub mod runner;
pub mod runtime;
pub mod source;
#[cfg(feature = "sql")]
pub mod sql;
pub mod tensor;

pub use arrow;
pub use atomic::{AtomicFile, write_atomic};
pub use config::OnError;
pub use diag::Diagnostic;
pub use docs::{PluginDoc, PluginKind};
pub use error::{Error, Result};
pub use params::Params;
pub use plugin::{BuildContext, Plugin, Stage, Upstream};
pub use registry::Registry;
pub use runner::{Emitter, StageContext};
