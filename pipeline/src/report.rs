//! `run.json`: what ran, how long, how many rows went in, out, and to the rejects. A shard writes
//! `run-IIIII-of-NNNNN.json`, and `pipe merge` combines those into run.json.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::Result;
use crate::runner::StageStats;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every stage finished.
    Ok,
    /// A stage failed (or rejects passed max_rejects).
    Failed,
    /// Stopped by Ctrl-C; what finished was flushed.
    Interrupted,
}

/// One stage's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage id.
    pub id: String,
    /// Plugin name.
    pub uses: String,
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Rows dropped by a filter.
    pub filtered: u64,
    /// For a source on a resumed run: rows not passed on because every sink had committed them
    /// before the interruption.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub resumed: u64,
    /// Time spent in the stage itself.
    pub seconds: f64,
    /// Time from the stage's start to its end, waiting included.
    pub wall_seconds: f64,
    /// Output rows per second of busy time.
    pub rows_per_second: f64,
    /// Figures of the stage's own.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl StageReport {
    pub(crate) fn new(id: &str, uses: &str, wall: Duration, extra: serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            id: id.to_string(),
            uses: uses.to_string(),
            rows_in: 0,
            rows_out: 0,
            rejected: 0,
            filtered: 0,
            resumed: 0,
            seconds: 0.0,
            wall_seconds: round3(wall.as_secs_f64()),
            rows_per_second: 0.0,
            extra,
        }
    }

    pub(crate) fn fill(&mut self, stats: &StageStats) {
        self.rows_in = stats.rows_in.load(Ordering::Relaxed);
        self.rows_out = stats.rows_out.load(Ordering::Relaxed);
        self.rejected = stats.rejected.load(Ordering::Relaxed);
        self.filtered = stats.filtered.load(Ordering::Relaxed);
        self.resumed = stats.resumed.load(Ordering::Relaxed);
        let busy = stats.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
        self.seconds = round3(busy);
        let rows = self.rows_out.max(self.rows_in) as f64;
        self.rows_per_second = if busy > 0.0 { (rows / busy).round() } else { 0.0 };
    }
}

/// The whole run, as written to run.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `[pipeline] name`.
    pub pipeline: String,
    /// How it ended.
    pub status: RunStatus,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Wall time of the run.
    pub seconds: f64,
    /// The pipeline seed.
    pub seed: u64,
    /// Where outputs went.
    pub output_dir: PathBuf,
    /// Whether this run continued an interrupted one (from `<output_dir>/.pipe-journal`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub resumed: bool,
    /// Rows rejected in all.
    pub rejected: u64,
    /// rejects.jsonl, when anything was rejected.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rejects_file: Option<PathBuf>,
    /// Under `--shard I/N`: this run's shard, `I`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shard: Option<u32>,
    /// Under `--shard I/N`: the number of shards, `N`; in the report of `pipe merge`, how many
    /// shards it merged.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shards: Option<u32>,
    /// In the report of `pipe merge`: the shards' wall times added up (`seconds` is the longest).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shard_seconds: Option<f64>,
    /// Per stage, in file order.
    pub stages: Vec<StageReport>,
}

impl RunReport {
    /// Writes the report atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut report = self.clone();
        report.seconds = round3(report.seconds);
        let text = serde_json::to_string_pretty(&report).expect("reports serialize") + "\n";
        write_atomic(path, text.as_bytes())
    }

    /// A short table for the terminal.
    pub fn summary(&self) -> String {
        let width = self.stages.iter().map(|s| s.id.len()).max().unwrap_or(5).max(5);
        let mut out = format!(
            "{:<width$}  {:>10}  {:>10}  {:>8}  {:>8}  {:>10}\n",
            "stage", "rows in", "rows out", "rejected", "seconds", "rows/s"
        );
        for s in &self.stages {
            out.push_str(&format!(
                "{:<width$}  {:>10}  {:>10}  {:>8}  {:>8.2}  {:>10}\n",
                s.id, s.rows_in, s.rows_out, s.rejected, s.seconds, s.rows_per_second
            ));
        }
        out
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
