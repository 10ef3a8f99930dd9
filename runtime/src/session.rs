//! The session keys every model stage takes, and the options a session is built with.
//!
//! [`SessionParams`] is `#[serde(flatten)]`-ed into each model stage's params struct, so the three
//! stages share one spelling, one default and one doc comment per key (the text `pipe plugins`
//! prints). The stage keeps `deny_unknown_fields`; `Params::parse` places errors in flattened keys.

use std::path::PathBuf;

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
    /// Intra-op threads; all cores when absent.
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

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The stage's session keys.
    pub params: SessionParams,
    /// `[runtime] onnxruntime`, if set.
    pub runtime: Option<PathBuf>,
}

impl SessionOptions {
    /// The options of a model stage: its session keys, and the pipeline's `[runtime] onnxruntime`
    /// resolved against the pipeline file's folder.
    pub fn for_stage(params: &SessionParams, cx: &BuildContext) -> Self {
        Self { params: params.clone(), runtime: cx.runtime.onnxruntime.as_ref().map(|r| cx.resolve(r)) }
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
