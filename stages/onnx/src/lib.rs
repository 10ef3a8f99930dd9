//! Model stages. `model.onnx` runs an ONNX model over each batch: columns feed the model's inputs,
//! each output becomes a column. The model's signature is checked against the input schema at
//! validate time; one session per stage is reused for every batch.

mod model;

use pipeline::Plugin;

pub use model::ModelOnnx;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(ModelOnnx)]
}
