//! ONNX Runtime for pipe's model stages, in one crate beneath them (as DataFusion's shared crates
//! sit beneath its operators): the engine, `pipeline`, links no ONNX Runtime, and the stages that
//! run models (`model.onnx`, `model.diffuse`, `model.generate`) share one way to load the library,
//! build a session from the same keys, register execution providers and feed Arrow tensors in.
//!
//! - [`library`]: finding and loading `libonnxruntime` once per process (`ort` with
//!   `load-dynamic`: nothing is linked or downloaded at build time).
//! - [`session`]: the session keys every model stage takes ([`SessionParams`]) and the
//!   [`SessionOptions`] built from them.
//! - [`providers`]: execution providers, registered in the order asked; one that cannot be is a
//!   warning naming it, never a silent fallback.
//! - [`model`]: a loaded [`Model`], its [`Signature`]s, and one run.
//! - [`merge`]: a stage's settings from its keys, else the model's files (scheduler_config.json,
//!   genai_config.json, ...), else defaults, recording where each came from ([`Merge`]).
//! - [`tensor`]: the values a run takes and returns ([`Feed`], [`Fetched`]).
//! - [`doctor`]: what `pipe doctor` reports about all of the above.

pub mod doctor;
pub mod library;
pub mod merge;
pub mod model;
pub mod providers;
pub mod session;
pub mod tensor;

pub use doctor::OnnxRuntimeCheck;
pub use library::{OnnxRuntime, onnxruntime};
pub use merge::{Merge, Origin};
pub use model::{Model, Signature, element_name, not_a_model_file};
/// The `ort` crate this one is built on, for stages that drive a session directly.
pub use ort;
pub use ort::value::TensorElementType;
pub use providers::Provider;
pub use session::{Optimization, SMALL_MODEL_BYTES, SessionOptions, SessionParams, ThreadDefault, is_small_model};
pub use tensor::{Feed, Fetched};
