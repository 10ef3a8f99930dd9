//! The plugins the `pipe` binary registers: the built-in families and the example custom plugin,
//! in one visible list, so the binary and the in-process tests build the same registry; and the
//! ONNX Runtime check that `pipe doctor` runs.

use pipeline::Registry;

/// Every plugin `pipe` ships, registered explicitly, and the check `pipe doctor` runs for them.
pub fn registry() -> Registry {
    Registry::new()
        .add(pipe_collect::plugins())
        .add(pipe_preprocess::plugins())
        .add(pipe_onnx::plugins())
        .add(pipe_diffuse::plugins())
        .add(pipe_generate::plugins())
        .add(pipe_refine::plugins())
        .add(pipe_sink::plugins())
        .add(pipe_process::plugins())
        .add(pipe_train::plugins())
        .add(pipe_text_stats::plugins())
        .add_check(pipe_runtime::OnnxRuntimeCheck)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_plugin_documents_the_kind_the_planner_uses() {
        for plugin in super::registry().iter() {
            assert_eq!(plugin.doc().kind, plugin.kind(), "{}", plugin.name());
        }
    }
}
