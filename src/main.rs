//! The `pipe` binary: the plugins of [`pipe::registry`] behind the engine's command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    pipeline::cli::main(pipe::registry())
}
