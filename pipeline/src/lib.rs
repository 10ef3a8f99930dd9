//! The pipe engine: reads `pipeline.toml`, resolves plugins from an explicit [`Registry`], checks the
//! whole graph's schemas before any data moves, and runs the stages on threads joined by bounded
//! channels, with Arrow record batches as the one currency between them.
//!
//! Stage crates depend on this crate only: they implement [`Plugin`] and build a [`Source`] or a [`Transform`], read their
//! params with [`Params::parse`], report per-item failures with [`StageContext::reject`], and
//! write files through [`AtomicFile`].
//!
//! The engine links no ONNX Runtime. The model stages share it through `pipe_runtime`, a support
//! crate beneath them that depends on this one; `pipe doctor` reports on it through a
//! [`doctor::Check`] the binary adds to its [`Registry`].

pub mod atomic;
pub mod cli;
pub mod columns;
pub mod config;
pub mod diag;
pub mod docs;
pub mod doctor;
pub mod error;
pub mod panics;
pub mod params;
pub mod plan;
pub mod plugin;
pub mod progress;
pub mod registry;
pub mod rejects;
pub mod report;
pub mod retry;
pub mod rng;
pub mod runner;
pub mod source;
#[cfg(feature = "sql")]
pub mod sql;
pub mod tensor;
pub mod testing;

pub use arrow;
pub use atomic::{AtomicFile, write_atomic};
pub use config::OnError;
pub use diag::Diagnostic;
pub use docs::{PluginDoc, PluginKind};
pub use error::{Error, Result};
pub use params::Params;
pub use plugin::{BuildContext, Plugin, Source, Stage, Transform};
pub use registry::Registry;
pub use runner::{Emitter, StageContext};

#[cfg(test)]
mod engine_tests;
