//! Finding the ONNX Runtime shared library: `[runtime] onnxruntime`, else `ORT_DYLIB_PATH`, else the
//! project's setup location, else the system's library folders. Nothing is downloaded.

use std::path::{Path, PathBuf};

/// The library file name the project's setup installs.
pub const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// One place the library was looked for.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The path tried.
    pub path: PathBuf,
    /// Why it was tried: "[runtime] onnxruntime", "ORT_DYLIB_PATH", "setup", "system".
    pub origin: &'static str,
}

/// How to get the library, in one sentence.
pub const INSTALL_HINT: &str = "ONNX Runtime was not found: run ./scripts/setup (it installs the onnxruntime==1.31.1 wheel into .pipe/), \
or set ORT_DYLIB_PATH or [runtime] onnxruntime to a libonnxruntime.so";

/// The places to look, in order.
pub fn candidates(configured: Option<&Path>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(Candidate { path: p.to_path_buf(), origin: "[runtime] onnxruntime" });
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(Candidate { path: PathBuf::from(p), origin: "ORT_DYLIB_PATH" });
    }
    for dir in setup_dirs() {
        out.push(Candidate { path: dir.join(LIBRARY_NAME), origin: "setup" });
    }
    let mut system: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    system.extend(
        ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"].map(PathBuf::from),
    );
    for dir in system {
        for name in [LIBRARY_NAME, "libonnxruntime.so.1", "libonnxruntime.so"] {
            out.push(Candidate { path: dir.join(name), origin: "system" });
        }
    }
    out
}

/// Folders where `scripts/setup` puts the library: `.pipe/onnxruntime` in the checkout this
/// binary was built from, and beside the binary's own checkout (target/<profile>/pipe).
fn setup_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("PIPE_HOME").filter(|p| !p.is_empty()) {
        dirs.push(PathBuf::from(root).join("onnxruntime"));
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            dirs.push(up.join(".pipe/onnxruntime"));
        }
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.pipe/onnxruntime");
    dirs.push(built_in);
    dirs.dedup();
    dirs
}

/// The first candidate that exists.
pub fn find(configured: Option<&Path>) -> Option<Candidate> {
    candidates(configured).into_iter().find(|c| c.path.is_file())
}
