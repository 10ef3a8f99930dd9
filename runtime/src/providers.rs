//! Execution providers: the ones a stage may ask for, registering them on a session in the order
//! asked, and what this build can register with the loaded library (for `pipe doctor`).
//!
//! Providers never fail silently. ort drops a provider that fails to register unless asked to
//! err, so every one is registered with `error_on_failure`; a provider the library lacks, or
//! one that fails to register, is a warning naming it, and the session runs on the next one (the
//! CPU at the end).

use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::library::OnnxRuntime;

/// An execution provider to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The CPU (always available).
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT.
    Tensorrt,
}

impl Provider {
    /// Every provider a stage may name, in the order `pipe doctor` lists them.
    pub const ALL: [Provider; 3] = [Provider::Cpu, Provider::Cuda, Provider::Tensorrt];

    /// The name in the pipeline file ("cuda").
    pub fn key(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// ONNX Runtime's name for it ("CUDAExecutionProvider").
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => ep::CPU::NAME,
            Provider::Cuda => ep::CUDA::NAME,
            Provider::Tensorrt => ep::TensorRT::NAME,
        }
    }

    /// What registers it, erring when it cannot; `None` for the CPU, which every session has.
    fn dispatch(self) -> Option<ExecutionProviderDispatch> {
        match self {
            Provider::Cpu => None,
            Provider::Cuda => Some(ep::CUDA::default().build().error_on_failure()),
            Provider::Tensorrt => Some(ep::TensorRT::default().build().error_on_failure()),
        }
    }
}

/// Whether this build can register a provider with the loaded library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It registers.
    Available,
    /// The library was built without it.
    NotInLibrary,
    /// The library has it, but registering it fails (its own libraries are missing, say).
    Fails(String),
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Availability::Available => f.write_str("available"),
            Availability::NotInLibrary => f.write_str("not in this library"),
            Availability::Fails(e) => write!(f, "in this library, but it fails to register: {e}"),
        }
    }
}

/// Tries `provider` on a session builder of `runtime`, as a model stage would.
pub fn availability(runtime: &OnnxRuntime, provider: Provider) -> Availability {
    let Some(dispatch) = provider.dispatch() else { return Availability::Available };
    if !runtime.providers.iter().any(|p| p == provider.ort_name()) {
        return Availability::NotInLibrary;
    }
    let registered = match Session::builder(runtime.environment()) {
        Ok(builder) => builder.with_execution_providers([dispatch]).map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match registered {
        Ok(()) => Availability::Available,
        Err(e) => Availability::Fails(first_line(&e)),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Registers the `wanted` providers in order on `builder`; one that `runtime` lacks or that fails
/// to register is a warning in `warnings`, never a silent fallback.
pub(crate) fn register(
    mut builder: SessionBuilder,
    wanted: &[Provider],
    runtime: &OnnxRuntime,
    warnings: &mut Vec<String>,
) -> SessionBuilder {
    for provider in wanted {
        let Some(dispatch) = provider.dispatch() else { continue };
        let name = provider.ort_name();
        if !runtime.providers.iter().any(|a| a == name) {
            warnings.push(format!(
                "execution provider {name} is not in this ONNX Runtime library (it has {}); falling back",
                runtime.providers.join(", ")
            ));
            continue;
        }
        builder = match builder.with_execution_providers([dispatch]) {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("execution provider {name} failed to register: {e}; falling back"));
                e.recover()
            }
        };
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_pipeline_file_and_onnx_runtime() {
        for p in Provider::ALL {
            let key: Provider = serde_json::from_value(serde_json::Value::from(p.key())).unwrap();
            assert_eq!(key, p);
        }
        let names: Vec<&str> = Provider::ALL.iter().map(|p| p.ort_name()).collect();
        assert_eq!(names, ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]);
    }
}
