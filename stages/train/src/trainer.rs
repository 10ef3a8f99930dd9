//! The user's training program as a running process (plugins/TRAINING.md, protocol 1): started
//! without a shell in its own process group, its stdout read for progress lines, its stderr
//! forwarded with the last lines kept for errors, and the whole group killed and reaped when it
//! fails, hangs past its timeout, the run is interrupted, or pipe itself dies.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline::{Error, Result};

/// The version of the interface in plugins/TRAINING.md, given as `PIPE_TRAIN_PROTOCOL`.
pub const PROTOCOL: u32 = 1;

/// Lines of the program's stderr quoted in an error.
const TAIL_LINES: usize = 20;

/// Seconds between progress lines in the log.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How to start the program.
#[derive(Debug, Clone)]
pub struct Trainer {
    /// The program and its arguments, paths resolved.
    pub argv: Vec<String>,
    /// The command as the pipeline file gives it, for messages.
    pub display: String,
    /// Its working directory (the pipeline's folder).
    pub cwd: PathBuf,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// How long it may run.
    pub timeout: Option<Duration>,
    /// The stage id, for its log lines and `PIPE_STAGE`.
    pub stage: String,
}

/// What one training is given.
pub struct Job<'a> {
    /// The dataset, an Arrow IPC file.
    pub data: &'a Path,
    /// The params, a JSON file.
    pub params: &'a Path,
    /// The empty folder the outputs go into.
    pub out: &'a Path,
    /// The pipeline seed.
    pub seed: u64,
}

/// The steps and metrics a program reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The last step reported.
    pub step: Option<u64>,
    /// The number of steps, when the program said.
    pub total: Option<u64>,
    /// For each metric, its values as (step, value), in the order reported.
    pub metrics: BTreeMap<String, Vec<(u64, f64)>>,
}

impl Progress {
    /// Takes in one stdout line; false when it is not a progress line.
    pub fn record(&mut self, line: &str) -> bool {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line) else { return false };
        if !["step", "total", "metrics"].iter().any(|k| o.contains_key(*k)) {
            return false;
        }
        let step = match o.get("step") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => return false,
            },
        };
        let total = match o.get("total") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => return false,
            },
        };
        let metrics = match o.get("metrics") {
            None => None,
            Some(serde_json::Value::Object(m)) => Some(m),
            Some(_) => return false,
        };
        if step.is_some() {
            self.step = step;
        }
        if total.is_some() {
            self.total = total;
        }
        let at = self.step.unwrap_or(0);
        for (name, value) in metrics.into_iter().flatten() {
            if let Some(v) = value.as_f64() {
                self.metrics.entry(name.clone()).or_default().push((at, v));
            }
        }
        true
    }

    /// The series as JSON: `{"loss": [[step, value], ...]}`.
    pub fn metrics_json(&self) -> serde_json::Value {
        let series = self.metrics.iter().map(|(name, points)| {
            let points = points.iter().map(|(s, v)| serde_json::json!([s, v])).collect();
            (name.clone(), serde_json::Value::Array(points))
        });
        serde_json::Value::Object(series.collect())
    }

    /// "step 120/200, loss 0.31": the latest figures, for the log.
    fn summary(&self) -> String {
        let mut parts = vec![match (self.step, self.total) {
            (Some(s), Some(t)) => format!("step {s}/{t}"),
            (Some(s), None) => format!("step {s}"),
            (None, _) => "no step reported yet".to_string(),
        }];
        for (name, points) in &self.metrics {
            if let Some((_, v)) = points.last() {
                parts.push(format!("{name} {v:.4}"));
            }
        }
        parts.join(", ")
    }
}

impl Trainer {
    /// Runs the program to the end and returns what it reported. Any failure kills its process
    /// group and reaps it before returning.
    pub fn run(&self, job: &Job, status: &dyn Fn(String)) -> Result<Progress> {
        let started = Instant::now();
        let mut running = self.spawn(job)?;
        let progress = Arc::new(Mutex::new(Progress::default()));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        // Each reader holds a sender: the channel disconnects when both have seen their pipe close.
        let (done, readers) = mpsc::channel::<()>();
        let stdout = running.child.stdout.take().expect("piped");
        let stderr = running.child.stderr.take().expect("piped");
        {
            let (progress, stage, done) = (progress.clone(), self.stage.clone(), done.clone());
            spawn_thread(&self.stage, "stdout", move || {
                for_lines(stdout, |line| {
                    if !progress.lock().unwrap_or_else(|p| p.into_inner()).record(line) {
                        pipeline::progress::log_line(&format!("[{stage}] {line}"));
                    }
                });
                drop(done);
            })?;
        }
        {
            let (tail, stage, done) = (tail.clone(), self.stage.clone(), done.clone());
            spawn_thread(&self.stage, "stderr", move || {
                for_lines(stderr, |line| {
                    pipeline::progress::log_line(&format!("[{stage}] {line}"));
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_string());
                });
                drop(done);
            })?;
        }

        let mut next_report = started + PROGRESS_INTERVAL;
        let mut next_status = started;
        let outcome = loop {
            match running.exited() {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(Error::msg(format!("could not wait for the trainer `{}`: {e}", self.display))),
            }
            if self.timeout.is_some_and(|t| started.elapsed() >= t) {
                break Err(Error::msg(format!(
                    "the trainer `{}` timed out after {} s and was killed",
                    self.display,
                    self.timeout.expect("checked").as_secs_f64()
                )));
            }
            if pipeline::runner::INTERRUPTED.load(Ordering::SeqCst) {
                break Err(Error::Interrupted);
            }
            if Instant::now() >= next_status {
                // The progress bar's message (a progress line without a terminal).
                next_status += Duration::from_millis(250);
                status(format!("training: {}", progress.lock().unwrap_or_else(|p| p.into_inner()).summary()));
            }
            if Instant::now() >= next_report {
                next_report += PROGRESS_INTERVAL;
                let summary = progress.lock().unwrap_or_else(|p| p.into_inner()).summary();
                tracing::info!(stage = %self.stage, "training: {summary} ({:.0} s)", started.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever the program left running in its group goes too, and then its pipes close.
        let status = running.kill_group();
        let outcome = outcome.and_then(|()| self.check_status(status));
        // A descendant that left the group may hold a pipe open: do not wait for it for long.
        drop(done);
        let deadline = Instant::now() + Duration::from_secs(2);
        while readers.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok() {}
        match outcome {
            Ok(()) => Ok(std::mem::take(&mut *progress.lock().unwrap_or_else(|p| p.into_inner()))),
            Err(Error::Interrupted) => Err(Error::Interrupted),
            Err(e) => Err(Error::msg(format!("{e}; {}", quote_tail(&tail)))),
        }
    }

    fn spawn(&self, job: &Job) -> Result<Running> {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .env("PIPE_TRAIN_DATA", job.data)
            .env("PIPE_TRAIN_PARAMS", job.params)
            .env("PIPE_TRAIN_OUT", job.out)
            .env("PIPE_TRAIN_SEED", job.seed.to_string())
            .env("PIPE_TRAIN_PROTOCOL", PROTOCOL.to_string())
            .env("PIPE_STAGE", &self.stage)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, so that Ctrl-C reaches pipe only and one signal ends the
        // program with everything it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    " (is `{}` installed and on PATH? a program in the pipeline's folder is named with a '/', as in ./train.sh)",
                    self.argv[0]
                ),
                _ => String::new(),
            };
            Error::msg(format!("could not start the trainer `{}`: {e}{hint}", self.display))
        })?;
        tracing::debug!(stage = %self.stage, pid = child.id(), command = %self.display, "trainer started");
        Ok(Running { child, status: None })
    }

    fn check_status(&self, status: Option<ExitStatus>) -> Result<()> {
        let Some(status) = status else {
            return Err(Error::msg(format!("the trainer `{}` could not be reaped", self.display)));
        };
        if status.success() {
            return Ok(());
        }
        let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}{}", signal_name(signal)),
            (None, None) => format!("ended with {status}"),
        };
        Err(Error::msg(format!("the trainer `{}` {how}", self.display)))
    }
}

/// The running program; dropping it kills its process group and reaps it.
struct Running {
    child: Child,
    status: Option<ExitStatus>,
}

impl Running {
    /// Whether the program has exited, leaving it unreaped: while its zombie holds the group's
    /// id, [`Running::kill_group`] cannot signal another process that reused the id.
    fn exited(&self) -> std::io::Result<bool> {
        // SAFETY: waitid writes only into `info`, which is zeroed as it requires for WNOHANG.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        if unsafe { libc::waitid(libc::P_PID, self.child.id(), &mut info, flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo, or left it zeroed.
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Kills every process of the group (the program has exited or is killed with it) and reaps
    /// the program: its exit status.
    fn kill_group(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // SAFETY: killpg only sends a signal; the group id is the unreaped program's own.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
            self.status = self.child.wait().ok();
            tracing::debug!(pid = self.child.id(), status = ?self.status, "trainer stopped");
            // The rest of the group dies as the kernel gets to it; wait a little, so that a run
            // that returns has left nothing running. Signal 0 only asks whether any member is left.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && unsafe { libc::killpg(self.child.id() as libc::pid_t, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Has the kernel kill the program when the thread that started it dies, so that kill -9 of pipe
/// leaves no training behind (Linux; the process group is killed on every other way out).
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // pipe died before the request took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

fn spawn_thread(stage: &str, what: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(format!("train-{stage}-{what}"))
        .spawn(f)
        .map(drop)
        .map_err(|e| Error::msg(format!("could not start a thread for the trainer's {what}: {e}")))
}

/// Calls `f` with each line of `reader` (lossy UTF-8, without its line break).
fn for_lines(reader: impl std::io::Read, mut f: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        f(String::from_utf8_lossy(&line).trim_end());
        line.clear();
    }
}

fn quote_tail(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    if tail.is_empty() {
        return "it wrote nothing to stderr".to_string();
    }
    let lines: Vec<String> = tail.iter().map(|l| format!("    {l}")).collect();
    format!("its last stderr lines:\n{}", lines.join("\n"))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` with sh in `dir` and returns what it reported.
    fn run_sh(dir: &Path, script: &str, timeout: Option<f64>) -> Result<Progress> {
        let trainer = Trainer {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            display: "sh -c ...".into(),
            cwd: dir.to_path_buf(),
            env: BTreeMap::from([("EXTRA".to_string(), "yes".to_string())]),
            timeout: timeout.map(Duration::from_secs_f64),
            stage: "fit".into(),
        };
        let (data, params, out) = (dir.join("data.arrow"), dir.join("params.json"), dir.join("out"));
        trainer.run(&Job { data: &data, params: &params, out: &out, seed: 7 }, &|_| {})
    }

    fn alive(pid_file: &Path) -> bool {
        let pid = std::fs::read_to_string(pid_file).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        stat.is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
    }

    #[test]
    fn the_program_gets_its_environment_and_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"sleep 600 & echo $! > child.pid
            test "$PIPE_TRAIN_SEED $PIPE_TRAIN_PROTOCOL $PIPE_STAGE $EXTRA" = "7 1 fit yes" || exit 9
            echo '{"step": 1, "total": 2, "metrics": {"loss": 2.5}}'
            echo 'plain text'
            echo '{"step": 2, "metrics": {"loss": 1.5}}'"#;
        let progress = run_sh(dir.path(), script, None).unwrap();
        assert_eq!((progress.step, progress.total), (Some(2), Some(2)));
        assert_eq!(progress.metrics["loss"], [(1, 2.5), (2, 1.5)]);
        assert!(!alive(&dir.path().join("child.pid")), "the program's child outlived it");
    }

    #[test]
    fn failures_quote_the_last_stderr_lines_and_kill_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_sh(dir.path(), "for i in $(seq 1 30); do echo line $i >&2; done; exit 3", None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the trainer `sh -c ...` exited with status 3; its last stderr lines:\n    line 11\n"),
            "{text}"
        );
        assert!(text.ends_with("    line 30") && !text.contains("line 10\n"), "{text}");

        let started = Instant::now();
        let err = run_sh(dir.path(), "sleep 600 & echo $! > child.pid; sleep 600", Some(0.3)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            "the trainer `sh -c ...` timed out after 0.3 s and was killed; it wrote nothing to stderr"
        );
        assert!(!alive(&dir.path().join("child.pid")), "the program's child outlived the timeout");

        let err = run_sh(dir.path(), "kill -SEGV $$", None).unwrap_err();
        assert!(err.to_string().contains("was killed by signal 11 (SIGSEGV)"), "{err}");
        let err = run_sh(dir.path(), "", None).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(err, Ok(()));
    }

    #[test]
    fn progress_lines_keep_the_series() {
        let mut p = Progress::default();
        assert!(p.record(r#"{"step": 1, "total": 3, "metrics": {"loss": 0.9, "acc": 0.1}}"#));
        assert!(!p.record("epoch 1 done"));
        assert!(!p.record(r#"{"loss": 0.5}"#), "an object without the keys is not progress");
        assert!(!p.record(r#"{"step": "two"}"#), "a step must be a count");
        assert!(p.record(r#"{"step": 2, "metrics": {"loss": 0.5, "note": "text is ignored"}}"#));
        assert!(p.record(r#"{"metrics": {"val_loss": 0.6}}"#), "metrics alone belong to the last step");
        assert_eq!((p.step, p.total), (Some(2), Some(3)));
        assert_eq!(p.metrics["loss"], [(1, 0.9), (2, 0.5)]);
        assert_eq!(p.metrics["val_loss"], [(2, 0.6)]);
        assert_eq!(p.metrics_json()["acc"], serde_json::json!([[1, 0.1]]));
        assert_eq!(p.summary(), "step 2/3, acc 0.1000, loss 0.5000, val_loss 0.6000");
    }
}
