//! The `pipe` binary: the built-in plugins and the example custom plugin, registered explicitly.

use std::process::ExitCode;

use pipeline::Registry;

fn main() -> ExitCode {
    let registry = Registry::new()
        .add(pipe_collect::plugins())
        .add(pipe_preprocess::plugins())
        .add(pipe_onnx::plugins())
        .add(pipe_diffuse::plugins())
        .add(pipe_generate::plugins())
        .add(pipe_refine::plugins())
        .add(pipe_sink::plugins())
        .add(pipe_process::plugins())
        .add(pipe_text_stats::plugins());
    pipeline::cli::main(registry)
}
