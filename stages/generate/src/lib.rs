//! Text generation: `model.generate` runs a GPT-style decoder exported to ONNX in a loop, one
//! token per step, carrying the key/value cache from step to step on the runtime's side. Greedy
//! search, sampling (temperature, top-k, top-p, repetition penalty) and beam search; prompts as
//! text (through a `tokenizer.json`) or as token ids; defaults from the model folder's
//! genai_config.json or config.json / generation_config.json.

mod folder;
mod kv;
mod lm;
mod search;
mod stage;

use pipeline::Plugin;

pub use stage::ModelGenerate;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(ModelGenerate)]
}
