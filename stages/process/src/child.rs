//! One running plugin process and the three threads that keep its pipes moving: a writer (so a
//! plugin that stops reading cannot block the stage past its timeout), a reader that turns stdout
//! into messages, and a stderr forwarder that also keeps the last lines for error messages.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use crate::wire::{self, Kind, Message, ReadError};

/// Lines of the plugin's stderr quoted in an error.
const TAIL_LINES: usize = 12;

/// How to start the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its working directory (the pipeline's folder).
    pub cwd: PathBuf,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The stage id, for its stderr lines and `PIPE_STAGE`.
    pub stage: String,
}

impl Spawn {
    /// The command as a user would type it, for messages.
    pub fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// What waiting for a message gave.
pub enum Received {
    /// A message.
    Message(Message),
    /// stdout ended or carried something else.
    Broken(ReadError),
    /// Nothing came before the deadline.
    TimedOut,
}

/// A running plugin. Dropping it kills the process and reaps it.
pub struct PluginProcess {
    spawn: Spawn,
    child: Child,
    reaped: Option<ExitStatus>,
    to_plugin: Option<Sender<Vec<u8>>>,
    from_plugin: Receiver<Result<Message, ReadError>>,
    stderr: Arc<StderrTail>,
}

impl PluginProcess {
    /// Starts the process with its pipes and threads.
    pub fn spawn(spec: &Spawn) -> std::io::Result<Self> {
        let mut command = Command::new(&spec.argv[0]);
        command
            .args(&spec.argv[1..])
            .current_dir(&spec.cwd)
            .env("PIPE_PROTOCOL", wire::PROTOCOL.to_string())
            .env("PIPE_STAGE", &spec.stage)
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: Ctrl-C in the terminal reaches pipe, which drains the plugin and
        // shuts it down cleanly, instead of killing it mid-batch.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn()?;
        tracing::debug!(stage = %spec.stage, pid = child.id(), command = %spec.display(), "plugin started");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            grow_pipe(stdin.as_raw_fd());
            grow_pipe(stdout.as_raw_fd());
        }
        let stderr = child.stderr.take().expect("piped");
        let name = |what: &str| format!("plugin-{}-{what}", spec.stage);

        let (to_plugin, outgoing) = unbounded::<Vec<u8>>();
        std::thread::Builder::new().name(name("stdin")).spawn(move || write_stdin(stdin, outgoing))?;

        // The answers to the messages in flight and a bye at most are ever outstanding; the
        // bound only guards against a plugin that talks out of turn.
        let (incoming, from_plugin) = bounded(crate::stage::WINDOW + 2);
        let stage = spec.stage.clone();
        std::thread::Builder::new().name(name("stdout")).spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 16, stdout);
            loop {
                let message = wire::read_message(&mut reader);
                match &message {
                    Ok(m) => tracing::debug!(stage = %stage, header = %serde_json::Value::from(m.header.clone()), "from plugin"),
                    Err(e) => tracing::debug!(stage = %stage, error = ?e, "from plugin"),
                }
                let last = message.as_ref().map_or(true, |m| m.kind == Kind::Bye);
                if incoming.send(message).is_err() || last {
                    break;
                }
            }
        })?;

        let tail = Arc::new(StderrTail::default());
        let lines = tail.clone();
        let stage = spec.stage.clone();
        std::thread::Builder::new().name(name("stderr")).spawn(move || lines.forward(stderr, &stage))?;

        Ok(Self { spawn: spec.clone(), child, reaped: None, to_plugin: Some(to_plugin), from_plugin, stderr: tail })
    }

    /// Whether it was started as `spec` says.
    pub fn spawned_as(&self, spec: &Spawn) -> bool {
        &self.spawn == spec
    }

    /// Queues a message for the plugin's stdin. A plugin that has gone away shows up as a broken
    /// stdout on the next receive, so a failed send is not reported here.
    pub fn send(&self, message: Vec<u8>) {
        if let Some(tx) = &self.to_plugin {
            let _ = tx.send(message);
        }
    }

    /// Closes the plugin's stdin once the queued messages are written.
    pub fn close_stdin(&mut self) {
        self.to_plugin = None;
    }

    /// Whether a message (or word that stdout broke) is waiting to be received.
    pub fn has_message(&self) -> bool {
        !self.from_plugin.is_empty()
    }

    /// The next message, waiting until `deadline`.
    pub fn recv(&self, deadline: Instant) -> Received {
        match self.from_plugin.recv_deadline(deadline) {
            Ok(Ok(m)) => Received::Message(m),
            Ok(Err(e)) => Received::Broken(e),
            Err(RecvTimeoutError::Timeout) => Received::TimedOut,
            // The reader stops after a bye or an error it has already handed over.
            Err(RecvTimeoutError::Disconnected) => Received::Broken(ReadError::Eof),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.reaped {
                return Some(status);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.reaped = Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// Kills the process (if it still runs) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = self.child.wait().ok();
            tracing::debug!(pid = self.child.id(), status = ?self.reaped, "plugin stopped");
        }
        self.to_plugin = None;
        self.reaped
    }

    /// The last lines the plugin wrote to stderr, waiting up to `wait` for it to close stderr
    /// (a crashing plugin's traceback may still be in the pipe).
    pub fn stderr_tail(&self, wait: Duration) -> Vec<String> {
        self.stderr.tail(wait)
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pipe capacity asked for: a whole message of the default size (1,024 small rows) fits, so
/// a message is one write and one wakeup on each side instead of one per 64 KiB (Linux's
/// default). 1 MiB is the most an unprivileged process may ask for by default.
#[cfg(target_os = "linux")]
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Asks for a larger pipe buffer; a refusal (a lower system limit) leaves the default.
#[cfg(target_os = "linux")]
fn grow_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns only changes its capacity.
    let _ = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

fn write_stdin(mut stdin: ChildStdin, outgoing: Receiver<Vec<u8>>) {
    for message in outgoing {
        if wire::write_all(&mut stdin, &message).is_err() {
            break;
        }
    }
    let _ = stdin.flush();
}

/// The plugin's last stderr lines, and whether stderr has closed.
#[derive(Default)]
struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    closed: Mutex<bool>,
    changed: Condvar,
}

impl StderrTail {
    fn forward(&self, stderr: impl std::io::Read, stage: &str) {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            line.clear();
            pipeline::progress::log_line(&format!("[{stage}] {text}"));
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(text);
        }
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    fn tail(&self, wait: Duration) -> Vec<String> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout_while(closed, wait, |closed| !*closed);
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// An exit status in words: "exit status 3", "killed by signal 9 (SIGKILL)".
pub fn describe_status(status: Option<ExitStatus>) -> String {
    let Some(status) = status else { return "an unknown exit status".to_string() };
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        let name = match signal {
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        return format!("killed by signal {signal}{name}");
    }
    status.to_string()
}
