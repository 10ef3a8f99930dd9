//! Finding and loading the ONNX Runtime shared library, once per process: `[runtime] onnxruntime`,
//! else `ORT_DYLIB_PATH`, else the project's setup location (`.pipe/onnxruntime`), else the
//! system's library folders. Nothing is downloaded. A path the user named explicitly must exist:
//! pipe never falls back from it to another library silently.
//!
//! This is the one place that opens the library (`ort::init_from`, and `dlopen` to read its
//! version), so the engine and the stages never touch it themselves.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pipeline::{Error, Result};

/// The library file name the project's setup installs.
pub const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// How to get the library, in one sentence.
pub const INSTALL_HINT: &str = "run scripts/setup (it installs the onnxruntime==1.31.1 wheel's library into .pipe/onnxruntime), \
or set ORT_DYLIB_PATH or [runtime] onnxruntime to a libonnxruntime.so";

/// One place the library was looked for.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The path tried.
    pub path: PathBuf,
    /// Why it was tried: "[runtime] onnxruntime", "ORT_DYLIB_PATH", "setup", "system".
    pub origin: &'static str,
}

impl Candidate {
    /// Whether the user named this path (so it must exist).
    pub fn explicit(&self) -> bool {
        matches!(self.origin, "[runtime] onnxruntime" | "ORT_DYLIB_PATH")
    }
}

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

/// Folders where `scripts/setup` puts the library: `$PIPE_HOME/onnxruntime`, `.pipe/onnxruntime`
/// above the running binary (target/<profile>/pipe in a checkout), and in the checkout this
/// binary was built from.
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
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.pipe/onnxruntime"));
    dirs.dedup();
    dirs
}

/// The library to load: the first explicit candidate (which must exist), else the first that
/// exists. Errs with one sentence saying what to do.
pub fn find(configured: Option<&Path>) -> Result<Candidate> {
    let all = candidates(configured);
    if let Some(explicit) = all.iter().find(|c| c.explicit()) {
        if explicit.path.is_file() {
            return Ok(explicit.clone());
        }
        return Err(Error::msg(format!(
            "{} names {}, which does not exist; {INSTALL_HINT}",
            explicit.origin,
            explicit.path.display()
        )));
    }
    all.into_iter()
        .find(|c| c.path.is_file())
        .ok_or_else(|| Error::msg(format!("ONNX Runtime was not found: {INSTALL_HINT}")))
}

/// A loaded ONNX Runtime: where it came from and what it can do.
#[derive(Debug)]
pub struct OnnxRuntime {
    /// The library file.
    pub path: PathBuf,
    /// How it was found.
    pub origin: &'static str,
    /// The library's version ("1.31.1").
    pub version: String,
    /// The library's build string (commit, build type).
    pub build_info: String,
    /// Execution providers compiled into the library ("CPUExecutionProvider", ...).
    pub providers: Vec<String>,
    environment: ort::environment::Environment,
}

impl OnnxRuntime {
    /// The ORT environment sessions are built on.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.environment
    }
}

static RUNTIME: OnceLock<std::result::Result<OnnxRuntime, Arc<Error>>> = OnceLock::new();

/// Loads ONNX Runtime once per process (later calls return the same library, whatever they pass).
/// A failure to load is kept too, so every stage reports the same cause.
pub fn onnxruntime(configured: Option<&Path>) -> Result<&'static OnnxRuntime> {
    RUNTIME
        .get_or_init(|| load(configured).map_err(Arc::new))
        .as_ref()
        .map_err(|e| Error::external("ONNX Runtime", SharedError(e.clone())))
}

/// A load failure shared by every stage that asks for the library.
#[derive(Debug)]
struct SharedError(Arc<Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

fn load(configured: Option<&Path>) -> Result<OnnxRuntime> {
    let found = find(configured)?;
    let path = found.path.canonicalize().map_err(|e| Error::io(&found.path, e))?;
    let failed = |e: &dyn std::fmt::Display| {
        Error::msg(format!("ONNX Runtime at {} could not be loaded: {e}; {INSTALL_HINT}", path.display()))
    };
    let builder = ort::init_from(&path).map_err(|e| failed(&e))?;
    let environment = builder.with_name("pipe").build().map_err(|e| failed(&e))?;
    Ok(OnnxRuntime {
        version: library_version(&path).unwrap_or_else(|| "unknown".to_string()),
        build_info: ort::info().to_string(),
        providers: available_providers(),
        path,
        origin: found.origin,
        environment,
    })
}

/// The version the loaded library reports through `OrtGetApiBase()->GetVersionString()`.
fn library_version(path: &Path) -> Option<String> {
    let c_path = std::ffi::CString::new(path.as_os_str().to_string_lossy().as_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD returns the handle of the library ort has already loaded (or null);
    // OrtGetApiBase is the library's documented entry point and returns a static struct.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let symbol = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if symbol.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(symbol);
            let base = get_base();
            (!base.is_null()).then(|| CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned())
        };
        libc::dlclose(handle);
        version
    }
}

/// The execution providers the loaded library was built with.
fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    // SAFETY: the C API fills `list` with `count` NUL-terminated strings, released below.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut count) };
    if !status.0.is_null() {
        unsafe { (api.ReleaseStatus)(status.0) };
        return Vec::new();
    }
    if list.is_null() {
        return Vec::new();
    }
    let names =
        (0..count as usize).map(|i| unsafe { CStr::from_ptr(*list.add(i)) }.to_string_lossy().into_owned()).collect();
    let status = unsafe { (api.ReleaseAvailableProviders)(list, count) };
    if !status.0.is_null() {
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_must_exist() {
        let err = find(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("[runtime] onnxruntime names /nonexistent/libonnxruntime.so, which does not exist"),
            "{text}"
        );
        assert!(text.contains("scripts/setup"), "{text}");
    }
}
