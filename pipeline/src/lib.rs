//! The pipe engine: reads `pipeline.toml`, resolves plugins from an explicit [`Registry`], checks the
//! whole graph's schemas before any data moves, and runs the stages on threads joined by bounded
//! channels, with Arrow record batches as the one currency between them.
//!
//! A stage's life: the planner asks each [`Plugin`] for its [`kind`](Plugin::kind) (source,
//! transform or sink) to wire default inputs, then builds every stage in graph order from its
//! [`Params`] and the schema it receives. The built [`Stage`] is a [`Source`] (run once), a
//! [`Transform`] (fed every batch, then finished; sinks are transforms) or a retry node
//! ([`retry::Retry`], refine.iterate), and its output schema is fixed from then on, so `pipe
//! validate` has type-checked the whole graph before any data moves. Retry nodes become loops the
//! runner drives: their span's stages exist once and see retried rows again, with each row's next
//! round of randomness ([`StageContext::rng`]).
//!
//! Stage crates depend on this crate: they implement [`Plugin`] and build a [`Source`] or a
//! [`Transform`], read their params with [`Params::parse`], report per-item failures with
//! [`StageContext::reject`], add context to errors with [`ResultExt`], write files through
//! [`AtomicFile`], commit what a sink has written to the run journal with
//! [`StageContext::journal`] (so a killed run resumes, see [`journal`]), and test themselves
//! in-process with [`testing::Harness`].
//!
//! The engine links no ONNX Runtime. The model stages share it through `pipe_runtime`, a support
//! crate beneath them that depends on this one; `pipe doctor` reports on it through a
//! [`doctor::Check`] the binary adds to its [`Registry`].

pub mod atomic;
mod board;
pub mod cache;
pub mod cli;
pub mod columns;
pub mod config;
pub mod diag;
pub mod docs;
pub mod doctor;
pub mod error;
mod faults;
pub mod formats;
pub mod journal;
pub mod merge;
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
pub mod rowcache;
pub mod runner;
pub mod shard;
pub mod source;
#[cfg(feature = "sql")]
pub mod sql;
pub mod storage;
pub mod tensor;
pub mod testing;

pub use arrow;
pub use atomic::{AtomicFile, write_atomic};
pub use config::OnError;
pub use diag::Diagnostic;
pub use docs::{PluginDoc, PluginKind};
pub use error::{Context, Error, Result, ResultExt};
pub use params::Params;
pub use plugin::{BuildContext, Deferred, Plugin, Shard, Source, Stage, Transform};
pub use registry::Registry;
pub use rowcache::RowCache;
pub use runner::{Emitter, StageContext};

#[cfg(test)]
mod engine_tests;
