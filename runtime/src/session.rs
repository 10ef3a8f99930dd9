//! The session keys every model stage takes, and the options a session is built with.
//!
//! [`SessionParams`] is `#[serde(flatten)]`-ed into each model stage's params struct, so the three
//! stages share one spelling, one default and one doc comment per key (the text `pipe plugins`
//! prints). The stage keeps `deny_unknown_fields`; `Params::parse` places errors in flattened keys.

use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use pipeline::BuildContext;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::providers::Provider;

/// Graph optimization level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    /// No graph optimizations.
    Disable,
    /// Constant folding and redundant-node removal.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout optimizations.
    #[default]
    All,
}

impl Optimization {
    /// ONNX Runtime's level.
    pub(crate) fn level(self) -> GraphOptimizationLevel {
        match self {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::Level3,
        }
    }
}

/// The keys of a model stage that say how its session runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
pub struct SessionParams {
    /// Execution providers to try in order ("cpu", "cuda", "tensorrt"); one that is not
    /// available is a warning and the next is used.
    #[serde(default = "cpu")]
    pub providers: Vec<Provider>,
    /// Intra-op threads; all cores when absent (model.generate: one for a decoder file under
    /// 32 MiB, else half the cores, at most 16).
    pub threads: Option<usize>,
    /// Graph optimization level.
    #[serde(default)]
    pub optimization: Optimization,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self { providers: cpu(), threads: None, optimization: Optimization::All }
    }
}

fn cpu() -> Vec<Provider> {
    vec![Provider::Cpu]
}

/// A model file under this size gets one intra-op thread where the stage asks for
/// [`ThreadDefault::BySize`] and the user gives no `threads`.
///
/// A decoder step does about two operations per weight per row, spread over a few hundred small
/// operators; below some millions of weights each operator is over in microseconds, so a second
/// thread spends more time being woken, or spinning while it waits, than it takes off the
/// operator (measured in BENCHMARKS.md, "Text generation": on onnxruntime-genai's
/// tiny-random-gpt2 two threads took about twice the CPU time of one, and more wall time).
/// 32 MiB is 8M float32 weights.
pub const SMALL_MODEL_BYTES: u64 = 32 << 20;

/// Whether the model file at `path` is under [`SMALL_MODEL_BYTES`] (a file whose size cannot be
/// read counts as large).
pub fn is_small_model(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() < SMALL_MODEL_BYTES)
}

/// A session's intra-op thread count when the stage's `threads` key is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ThreadDefault {
    /// All logical cores: for models whose work per call grows with the input (images, latents),
    /// where the weights' size says little about an operator's cost.
    #[default]
    AllCores,
    /// For decoders run a token at a time, whose work per call follows their weights: one thread
    /// for a model file under [`SMALL_MODEL_BYTES`]; above it half the logical cores, at least
    /// one and at most 16, as onnxruntime-genai chooses (one physical core per thread where
    /// cores have two hyperthreads, and cores left for the stages around the decoder). On the
    /// 2-core development machine, shared with other work, one thread also ran a
    /// GPT-2-small-sized decoder faster than two (BENCHMARKS.md).
    BySize,
}

impl ThreadDefault {
    /// The thread count for the model file at `path` (a file whose size cannot be read counts
    /// as large).
    pub fn threads(self, path: &Path) -> usize {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self {
            ThreadDefault::AllCores => all,
            ThreadDefault::BySize if is_small_model(path) => 1,
            ThreadDefault::BySize => (all / 2).clamp(1, 16),
        }
    }
}

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The stage's session keys.
    pub params: SessionParams,
    /// `[runtime] onnxruntime`, if set.
    pub runtime: Option<PathBuf>,
    /// The intra-op thread count when `params.threads` is absent.
    pub thread_default: ThreadDefault,
}

impl SessionOptions {
    /// The options of a model stage: its session keys, and the pipeline's `[runtime] onnxruntime`
    /// resolved against the pipeline file's folder.
    pub fn for_stage(params: &SessionParams, cx: &BuildContext) -> Self {
        Self {
            params: params.clone(),
            runtime: cx.runtime.onnxruntime.as_ref().map(|r| cx.resolve(r)),
            thread_default: ThreadDefault::AllCores,
        }
    }

    /// The same options with another default thread count.
    pub fn with_thread_default(self, thread_default: ThreadDefault) -> Self {
        Self { thread_default, ..self }
    }

    /// The intra-op threads for the model file at `path`: the `threads` key, else the default.
    pub fn threads(&self, path: &Path) -> usize {
        self.params.threads.unwrap_or_else(|| self.thread_default.threads(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{PluginDoc, PluginKind};

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct StageParams {
        /// The model.
        model: String,
        #[serde(flatten)]
        session: SessionParams,
    }

    #[test]
    fn the_keys_are_the_stages_own() {
        let p = pipeline::Params::from_toml("m", "model = \"a.onnx\"\nproviders = [\"cuda\", \"cpu\"]\nthreads = 2\n")
            .unwrap();
        let p: StageParams = p.parse().unwrap();
        assert_eq!(p.model, "a.onnx");
        let expected = SessionParams {
            providers: vec![Provider::Cuda, Provider::Cpu],
            threads: Some(2),
            optimization: Optimization::All,
        };
        assert_eq!(p.session, expected);
        let p: StageParams = pipeline::Params::from_toml("m", "model = \"a.onnx\"\n").unwrap().parse().unwrap();
        assert_eq!(p.session, SessionParams::default());
    }

    #[test]
    fn a_small_decoder_gets_one_thread_a_large_one_half_the_cores_unless_threads_is_given() {
        let dir = std::env::temp_dir().join(format!("pipe-runtime-threads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (small, large) = (dir.join("small.onnx"), dir.join("large.onnx"));
        std::fs::File::create(&small).unwrap().set_len(SMALL_MODEL_BYTES - 1).unwrap();
        std::fs::File::create(&large).unwrap().set_len(SMALL_MODEL_BYTES).unwrap();
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        let by_size = SessionOptions::default().with_thread_default(ThreadDefault::BySize);
        assert_eq!(by_size.threads(&small), 1);
        let half = (all / 2).clamp(1, 16);
        assert_eq!(by_size.threads(&large), half);
        assert_eq!(by_size.threads(&dir.join("missing.onnx")), half);
        assert_eq!(SessionOptions::default().threads(&small), all);
        let mut given = by_size.clone();
        given.params.threads = Some(3);
        assert_eq!(given.threads(&small), 3);
        assert_eq!(given.threads(&large), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pipe_plugins_lists_them_beside_the_stages_keys() {
        let doc = PluginDoc::new(PluginKind::Transform, "x").params::<StageParams>();
        let names: Vec<&str> = doc.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["model", "optimization", "providers", "threads"]);
        let providers = &doc.params[2];
        assert_eq!(providers.ty, "array of \"cpu\" | \"cuda\" | \"tensorrt\"");
        assert_eq!(providers.default.as_deref(), Some("[\"cpu\"]"));
        assert!(providers.doc.starts_with("Execution providers to try in order"), "{}", providers.doc);
    }
}
