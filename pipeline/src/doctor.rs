//! `pipe doctor`: what this machine offers the binary's plugins. The engine checks the one thing
//! it runs itself (the Python that process plugins start with); what a support crate needs, it
//! checks with a [`Check`] that the binary adds to its [`Registry`], so the engine links none of
//! it (pipe_runtime's check finds and loads ONNX Runtime).

use std::io::Write;

use crate::registry::Registry;

/// One thing `pipe doctor` looks at, e.g. a shared library the plugins load.
pub trait Check: Send + Sync {
    /// Looks, and says what was found.
    fn check(&self) -> Finding;
}

/// What a [`Check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finding {
    /// What was found, one line each, for stdout.
    pub lines: Vec<String>,
    /// Why the plugins cannot work on this machine, when they cannot: printed to stderr, and
    /// `pipe doctor` exits 1.
    pub error: Option<String>,
}

/// Runs `pipe doctor` with the registry's checks; returns the exit code.
pub(crate) fn run(registry: &Registry) -> i32 {
    report(registry, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

/// Writes what the checks found to `out` and their errors to `err`; 1 when one erred, else 0.
fn report(registry: &Registry, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let _ = writeln!(out, "pipe {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "{}", python_for_plugins());
    let mut code = 0;
    for check in registry.checks() {
        let finding = check.check();
        for line in &finding.lines {
            let _ = writeln!(out, "{line}");
        }
        if let Some(e) = &finding.error {
            let _ = out.flush();
            let _ = writeln!(err, "error: {e}");
            code = 1;
        }
    }
    code
}

/// What `python3` on PATH offers process plugins written in Python: its version, pyarrow and the
/// pipe_plugin SDK (plugins/python), each found or not. Informational: pipe needs none of them.
fn python_for_plugins() -> String {
    const PROBE: &str = "import sys\nparts = [sys.executable, 'Python ' + sys.version.split()[0]]\n\
        for name in ('pyarrow', 'pipe_plugin'):\n    try:\n        m = __import__(name)\n        \
        parts.append(name + ' ' + getattr(m, '__version__', 'found'))\n    except Exception:\n        \
        parts.append(name + ' missing')\nprint(', '.join(parts))";
    match std::process::Command::new("python3").arg("-c").arg(PROBE).stdin(std::process::Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let hint =
                if found.contains("missing") { " (scripts/setup --python makes .pipe/venv with both)" } else { "" };
            format!("Python for process plugins: {found}{hint}")
        }
        _ => "Python for process plugins: no python3 on PATH (needed only by plugins written in Python)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Says(&'static str, Option<&'static str>);

    impl Check for Says {
        fn check(&self) -> Finding {
            Finding { lines: vec![self.0.to_string()], error: self.1.map(str::to_string) }
        }
    }

    fn doctor(registry: &Registry) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = report(registry, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn checks_report_in_the_order_added_and_an_error_exits_1() {
        let (code, out, err) = doctor(&Registry::new().add_check(Says("a: found", None)).add_check(Says("b", None)));
        assert_eq!(code, 0);
        assert!(out.starts_with("pipe ") && out.contains("Python for process plugins: "), "{out}");
        assert!(out.ends_with("a: found\nb\n"), "{out}");
        assert!(err.is_empty(), "{err}");
        let (code, out, err) = doctor(&Registry::new().add_check(Says("b: not found", Some("install b"))));
        assert_eq!((code, err.as_str()), (1, "error: install b\n"));
        assert!(out.ends_with("b: not found\n"), "{out}");
    }
}
