//! Progress while a pipeline runs: a bar per stage with rows/s on a terminal, a plain line per
//! stage every few seconds otherwise (CI logs), nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::docs::PluginKind;
use crate::runner::StageStats;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on stderr.
    Bars,
    /// A line per stage every few seconds.
    Lines,
    /// Nothing.
    Off,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, lines otherwise, nothing when quiet.
    pub fn detect(quiet: bool) -> Self {
        match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => ProgressMode::Off,
            (false, true) => ProgressMode::Bars,
            (false, false) => ProgressMode::Lines,
        }
    }
}

/// The bars being drawn, if any, so [`log_line`] can print above them.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Prints a line of a stage's log (a process plugin's stderr, a warning) to stderr. While progress
/// bars are drawn it goes above them instead of through them.
pub fn log_line(line: &str) {
    let bars = BARS.lock().unwrap_or_else(|p| p.into_inner());
    match bars.as_ref() {
        Some(multi) => {
            let _ = multi.println(line);
        }
        None => eprintln!("{line}"),
    }
}

/// Seconds between plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

type Tracked = Vec<(String, PluginKind, Arc<StageStats>)>;

/// The running display; `finish` stops it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing progress of these stages.
    pub fn start(stages: Tracked, mode: ProgressMode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = match mode {
            ProgressMode::Off => None,
            ProgressMode::Bars => Some(std::thread::spawn(move || bars(stages, &flag))),
            ProgressMode::Lines => Some(std::thread::spawn(move || lines(stages, &flag))),
        };
        Self { stop, handle }
    }

    /// Stops the display after a last update. The thread is woken, not waited for to wake up by
    /// itself, so a short run does not end up to 100 ms late.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn rows(kind: PluginKind, s: &StageStats) -> u64 {
    match kind {
        PluginKind::Source => s.rows_out.load(Ordering::Relaxed),
        _ => s.rows_in.load(Ordering::Relaxed),
    }
}

/// A stage's status and its rejected rows, for a bar's message or a progress line.
fn message(s: &StageStats) -> String {
    let status = s.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match (s.rejected.load(Ordering::Relaxed), status.is_empty()) {
        (0, _) => status,
        (n, true) => format!("{n} rejected"),
        (n, false) => format!("{status}, {n} rejected"),
    }
}

fn bars(stages: Tracked, stop: &AtomicBool) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let width = stages.iter().map(|s| s.0.len()).max().unwrap_or(5);
    let style = ProgressStyle::with_template(&format!(
        "{{prefix:>{width}}} {{spinner}} {{pos:>9}} rows  {{per_sec:>12}}  {{elapsed:>4}} {{msg}}"
    ))
    .expect("valid template");
    let bars: Vec<ProgressBar> = stages
        .iter()
        .map(|(id, _, _)| multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(id.clone())))
        .collect();
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = Some(multi.clone());
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        for ((_, kind, s), bar) in stages.iter().zip(&bars) {
            if bar.is_finished() {
                continue;
            }
            bar.set_position(rows(*kind, s));
            let message = message(s);
            if !message.is_empty() {
                bar.set_message(message);
            }
            if s.done.load(Ordering::SeqCst) || stopping {
                bar.finish();
            } else {
                bar.tick();
            }
        }
        if stopping {
            break;
        }
        pause(stop);
    }
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Waits 100 ms between updates, or until [`Progress::finish`] wakes the thread.
fn pause(stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::park_timeout(until - now);
    }
}

fn lines(stages: Tracked, stop: &AtomicBool) {
    let started = Instant::now();
    let mut last = vec![(0u64, Instant::now()); stages.len()];
    let mut next = started + LINE_INTERVAL;
    while !stop.load(Ordering::SeqCst) {
        pause(stop);
        if Instant::now() < next {
            continue;
        }
        next += LINE_INTERVAL;
        let mut err = std::io::stderr().lock();
        for ((id, kind, s), prev) in stages.iter().zip(last.iter_mut()) {
            let message = message(s);
            if s.done.load(Ordering::SeqCst) && prev.0 == rows(*kind, s) {
                continue;
            }
            let now = rows(*kind, s);
            let rate = (now - prev.0) as f64 / prev.1.elapsed().as_secs_f64().max(1e-9);
            let _ = writeln!(
                err,
                "[{:>6.1}s] {id}: {now} rows ({rate:.0} rows/s){}",
                started.elapsed().as_secs_f64(),
                if message.is_empty() { String::new() } else { format!(", {message}") }
            );
            *prev = (now, Instant::now());
        }
    }
}
