//! What `pipe doctor` says about ONNX Runtime: the library found (or where it was looked for),
//! its build, the execution providers compiled into it, and which of the providers a stage may
//! name this build can register with it.

use pipeline::doctor::{Check, Finding};

use crate::library::{OnnxRuntime, candidates, onnxruntime};
use crate::providers::{Provider, availability};

/// The ONNX Runtime check, for `Registry::add_check`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnnxRuntimeCheck;

impl Check for OnnxRuntimeCheck {
    fn check(&self) -> Finding {
        match onnxruntime(None) {
            Ok(rt) => Finding { lines: found(rt), error: None },
            Err(e) => {
                let mut lines = vec!["ONNX Runtime: not found".to_string(), "  looked in:".to_string()];
                for c in candidates(None).iter().filter(|c| c.origin != "system") {
                    lines.push(format!("    {} ({})", c.path.display(), c.origin));
                }
                lines.push("    the system library folders (LD_LIBRARY_PATH, /usr/local/lib, /usr/lib)".to_string());
                Finding { lines, error: Some(e.to_string()) }
            }
        }
    }
}

fn found(rt: &OnnxRuntime) -> Vec<String> {
    let providers: Vec<String> =
        Provider::ALL.iter().map(|p| format!("{} ({})", p.key(), availability(rt, *p))).collect();
    vec![
        format!("ONNX Runtime {}: {} (from {})", rt.version, rt.path.display(), rt.origin),
        format!("build: {}", rt.build_info.trim()),
        format!("execution providers: {}", rt.providers.join(", ")),
        format!("providers: {}", providers.join(", ")),
    ]
}
