//! `pipe merge FILE`: the last step of a sharded run. Once the `N` shards (`pipe run FILE --shard
//! I/N`) have ended, it checks that every one finished, writes `run.json` from their
//! `run-IIIII-of-NNNNN.json` and `rejects.jsonl` from their `rejects-IIIII-of-NNNNN.jsonl`, and
//! removes the temporary files that killed shards left in the output folder. The shards' data
//! stays where they wrote it: a table as the parts of one dataset, images under their own names.
//!
//! Figures combine as follows: row counts and the stages' busy seconds add up, a stage's wall
//! time and the run's are the longest shard's (`shard_seconds` adds the shards' up), and of a
//! stage's own figures, whole numbers add up, other numbers (rates) are averaged weighted by the
//! rows each shard's stage received, objects and lists of one length merge item by item, values
//! every shard agrees on are kept, and the rest become a list with one value per shard.
//!
//! Shards whose output folders are not shared (the pods of a Kubernetes Indexed Job, cloud
//! machines) write their sinks to object storage and name a prefix in `[pipeline] run_reports`:
//! each run uploads its report and rejects there when it ends ([`publish`]), and `pipe merge`
//! reads them from there and uploads the merged ones beside them ([`merge_remote`]).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::plugin::Shard;
use crate::report::{RunReport, RunStatus, StageReport};
use crate::shard::RunFiles;

/// Merges the shards' reports and rejects in `output_dir` of the pipeline `pipeline`: `shards`
/// of them, or as many as the shard reports there say. Returns the report written to run.json;
/// a shard missing, failed, interrupted or still running is an error naming it.
pub fn merge(output_dir: &Path, pipeline: &str, shards: Option<u32>) -> Result<RunReport> {
    let count = match shards {
        Some(0) => return Err(Error::msg("--shards 0: the shard count must be at least 1")),
        Some(n) => n,
        None => found_count(output_dir)?,
    };
    let mut reports = Vec::with_capacity(count as usize);
    let mut unfinished = Vec::new();
    for index in 0..count {
        let shard = Shard { index, count };
        let files = RunFiles::new(output_dir, Some(shard));
        let name = file_name(&files.report);
        let report: RunReport = match std::fs::read_to_string(&files.report) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                unfinished.push(format!("shard {shard}: no {name} (it has not run, or has not ended)"));
                continue;
            }
            Err(e) => return Err(Error::io(&files.report, e)),
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::msg(format!("{}: not a run report: {e}", files.report.display())))?,
        };
        if files.journal.exists() {
            unfinished.push(format!(
                "shard {shard}: its journal {} is there: it is running, or was interrupted or failed (run it \
                 again to finish it)",
                file_name(&files.journal)
            ));
            continue;
        }
        match report.status {
            RunStatus::Ok => {}
            RunStatus::Failed => {
                let why = report.error.as_deref().unwrap_or("no error recorded");
                unfinished.push(format!("shard {shard} failed ({name}: {why})"));
                continue;
            }
            RunStatus::Interrupted => {
                unfinished.push(format!("shard {shard} was interrupted ({name}): run it again to finish it"));
                continue;
            }
        }
        if report.pipeline != pipeline {
            return Err(Error::msg(format!(
                "{}: a run of pipeline \"{}\", not \"{pipeline}\"",
                files.report.display(),
                report.pipeline
            )));
        }
        if report.shard != Some(index) || report.shards != Some(count) {
            return Err(Error::msg(format!("{}: not the report of shard {shard}", files.report.display())));
        }
        reports.push(report);
    }
    if !unfinished.is_empty() {
        return Err(Error::msg(format!(
            "cannot merge {} of {count} shards in {}: {}",
            unfinished.len(),
            output_dir.display(),
            unfinished.join("; ")
        )));
    }
    let first = &reports[0];
    for (index, r) in reports.iter().enumerate().skip(1) {
        let ids = |r: &RunReport| r.stages.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        if ids(r) != ids(first) || r.seed != first.seed {
            return Err(Error::msg(format!(
                "shard {index}/{count} ran other stages or another seed than shard 0/{count} (stages [{}], seed {} \
                 against [{}], seed {}): run every shard of one pipeline file",
                ids(r).join(", "),
                r.seed,
                ids(first).join(", "),
                first.seed
            )));
        }
    }
    let stale = other_runs_parts(output_dir, count);
    if let Some(first) = stale.first() {
        return Err(Error::msg(format!(
            "{} holds {} dataset parts of a run with another number of shards (such as {}): the dataset would \
             hold those rows too; remove them (or merge that run with --shards)",
            output_dir.display(),
            stale.len(),
            first.display()
        )));
    }
    let rejects = RunFiles::new(output_dir, None).rejects;
    let rejected = concat_rejects(output_dir, count, &rejects)?;
    let stages = (0..first.stages.len())
        .map(|k| merge_stage(&reports.iter().map(|r| &r.stages[k]).collect::<Vec<_>>()))
        .collect();
    let report = RunReport {
        pipeline: pipeline.to_string(),
        status: RunStatus::Ok,
        error: None,
        seconds: reports.iter().map(|r| r.seconds).fold(0.0, f64::max),
        seed: first.seed,
        output_dir: output_dir.to_path_buf(),
        resumed: reports.iter().any(|r| r.resumed),
        rejected,
        rejects_file: (rejected > 0).then_some(rejects),
        shard: None,
        shards: Some(count),
        shard_seconds: Some(round3(reports.iter().map(|r| r.seconds).sum())),
        stages,
    };
    report.write(&RunFiles::new(output_dir, None).report)?;
    crate::journal::remove_stale_temporaries(output_dir);
    Ok(report)
}

/// Uploads the report and rejects of the run of `shard` in `output_dir` to the prefix `url`
/// (`[pipeline] run_reports`), under the names they have in the folder. The rejects go first and
/// always (an empty object when nothing was rejected, so a retried shard replaces what an
/// earlier attempt left), then the report: a report in the store means the shard's outputs are
/// uploaded. A run that left no report (refused before it started) uploads nothing.
pub fn publish(output_dir: &Path, shard: Option<Shard>, url: &str) -> Result<()> {
    let files = RunFiles::new(output_dir, shard);
    if !files.report.is_file() {
        return Ok(());
    }
    let remote = crate::storage::open("run_reports", &prefix(url), true)?;
    let rejects = match files.rejects.is_file() {
        true => files.rejects.clone(),
        false => {
            let empty = output_dir.join(crate::storage::STAGING).join(file_name(&files.rejects));
            std::fs::create_dir_all(output_dir.join(crate::storage::STAGING)).map_err(|e| Error::io(output_dir, e))?;
            std::fs::write(&empty, b"").map_err(|e| Error::io(&empty, e))?;
            empty
        }
    };
    remote.upload(&rejects, &file_name(&files.rejects))?;
    remote.upload(&files.report, &file_name(&files.report))
}

/// `pipe merge` of shards that uploaded their reports to the prefix `url` ([`publish`]): reads
/// the shards' reports and rejects from there into `output_dir` (under `.pipe-remote/`), merges
/// them as [`merge`] does, and uploads `run.json` and `rejects.jsonl` (when rows were rejected)
/// beside them; local copies go to `output_dir`. Dataset parts under the prefix of a run of
/// another number of shards are refused, as in a local folder.
pub fn merge_remote(url: &str, output_dir: &Path, pipeline: &str, shards: Option<u32>) -> Result<RunReport> {
    let url = prefix(url);
    let remote = crate::storage::open("run_reports", &url, true)?;
    let staged = crate::storage::staging_path(&output_dir.join(crate::storage::STAGING).join("run_reports"), &url);
    match std::fs::remove_dir_all(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&staged, e)),
        _ => {}
    }
    std::fs::create_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
    let objects = remote.list()?;
    let mut parts = Vec::new();
    for object in &objects {
        let name = object.relative.rsplit('/').next().unwrap_or(&object.relative);
        if object.relative.contains('/') {
            parts.extend(part_count(name).map(|m| (m, &object.relative)));
        } else if is_shard_file(name) {
            remote.download(&object.relative, &staged.join(name))?;
        }
    }
    let mut report = merge(&staged, pipeline, shards)?;
    let count = report.shards.unwrap_or(1);
    if let Some((_, stale)) = parts.iter().find(|(m, _)| *m != count) {
        return Err(Error::msg(format!(
            "{url} holds {} dataset parts of a run with another number of shards (such as {}): the dataset would \
             hold those rows too; remove them (or merge that run with --shards)",
            parts.iter().filter(|(m, _)| *m != count).count(),
            remote.url_of(stale)
        )));
    }
    report.output_dir = PathBuf::from(url.trim_end_matches('/'));
    let local = RunFiles::new(output_dir, None);
    let merged = RunFiles::new(&staged, None);
    report.rejects_file = report.rejected.gt(&0).then(|| PathBuf::from(remote.url_of(&file_name(&local.rejects))));
    report.write(&merged.report)?;
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    if report.rejected > 0 {
        remote.upload(&merged.rejects, &file_name(&local.rejects))?;
        std::fs::copy(&merged.rejects, &local.rejects).map_err(|e| Error::io(&local.rejects, e))?;
    }
    remote.upload(&merged.report, &file_name(&local.report))?;
    std::fs::copy(&merged.report, &local.report).map_err(|e| Error::io(&local.report, e))?;
    Ok(report)
}

/// `url` ending in `/`, so that it names a prefix.
fn prefix(url: &str) -> String {
    match url.ends_with('/') {
        true => url.to_string(),
        false => format!("{url}/"),
    }
}

/// Whether `name` is a shard's report or rejects: `run-IIIII-of-NNNNN.json`,
/// `rejects-IIIII-of-NNNNN.jsonl`.
fn is_shard_file(name: &str) -> bool {
    let middle = name
        .strip_prefix("run-")
        .and_then(|n| n.strip_suffix(".json"))
        .or_else(|| name.strip_prefix("rejects-").and_then(|n| n.strip_suffix(".jsonl")));
    middle
        .and_then(|m| m.split_once("-of-"))
        .is_some_and(|(i, n)| !i.is_empty() && !n.is_empty() && i.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit()))
}

/// The shard count of the shard reports in `output_dir`, when they agree on one.
fn found_count(output_dir: &Path) -> Result<u32> {
    let entries = std::fs::read_dir(output_dir).map_err(|e| Error::io(output_dir, e))?;
    let mut counts: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, count) = name.strip_prefix("run-")?.strip_suffix(".json")?.split_once("-of-")?;
            count.parse().ok()
        })
        .collect();
    counts.sort_unstable();
    counts.dedup();
    match counts.as_slice() {
        [] => Err(Error::msg(format!(
            "{} holds no shard report (run-IIIII-of-NNNNN.json): run the shards first, `pipe run FILE --shard I/N`",
            output_dir.display()
        ))),
        [n] => Ok(*n),
        many => Err(Error::msg(format!(
            "{} holds the reports of runs of {} shards: give --shards N to say which run to merge",
            output_dir.display(),
            many.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The dataset parts (`part-IIIII-of-MMMMM...`) under `output_dir` of a run of other than `count`
/// shards, outside the journals.
fn other_runs_parts(output_dir: &Path, count: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![output_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else if part_count(&name).is_some_and(|m| m != count) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// `M` of a part's name `part-IIIII-of-MMMMM.EXT`.
fn part_count(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("part-")?;
    let (index, rest) = rest.split_once("-of-")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let ok = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) && digits > 0;
    ok.then(|| rest[..digits].parse().ok()).flatten()
}

/// Writes the shards' rejects, in shard order, to `dest` (removed when there are none); returns
/// how many rows they reject.
fn concat_rejects(output_dir: &Path, count: u32, dest: &Path) -> Result<u64> {
    use std::io::Write;
    let mut out = crate::atomic::AtomicFile::create(dest)?;
    let mut rows = 0;
    for index in 0..count {
        let path = RunFiles::new(output_dir, Some(Shard { index, count })).rejects;
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            r => r.map_err(|e| Error::io(&path, e))?,
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::msg(format!("{}: a line that is not JSON: {e}", path.display())))?;
            rows += value["rows"].as_u64().unwrap_or(1);
            writeln!(out, "{line}").map_err(|e| Error::io(dest, e))?;
        }
    }
    if rows == 0 {
        drop(out);
        match std::fs::remove_file(dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(dest, e)),
            _ => {}
        }
        return Ok(0);
    }
    out.commit()?;
    Ok(rows)
}

/// One stage's figures over every shard.
fn merge_stage(shards: &[&StageReport]) -> StageReport {
    let sum = |f: fn(&StageReport) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let seconds: f64 = shards.iter().map(|s| s.seconds).sum();
    let (rows_in, rows_out) = (sum(|s| s.rows_in), sum(|s| s.rows_out));
    StageReport {
        id: shards[0].id.clone(),
        uses: shards[0].uses.clone(),
        rows_in,
        rows_out,
        rejected: sum(|s| s.rejected),
        filtered: sum(|s| s.filtered),
        resumed: sum(|s| s.resumed),
        seconds: round3(seconds),
        wall_seconds: shards.iter().map(|s| s.wall_seconds).fold(0.0, f64::max),
        rows_per_second: if seconds > 0.0 { (rows_in.max(rows_out) as f64 / seconds).round() } else { 0.0 },
        extra: merge_extra(shards),
    }
}

/// A stage's own figures over every shard (see the module's doc for the rules).
fn merge_extra(shards: &[&StageReport]) -> Map<String, Value> {
    let weights: Vec<f64> = shards.iter().map(|s| s.rows_in.max(1) as f64).collect();
    let maps: Vec<Option<&Map<String, Value>>> = shards.iter().map(|s| Some(&s.extra)).collect();
    merge_maps(&maps, &weights)
}

/// Objects merge key by key, each key by [`merge_values`].
fn merge_maps(maps: &[Option<&Map<String, Value>>], weights: &[f64]) -> Map<String, Value> {
    let mut keys: Vec<&String> = maps.iter().flatten().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let values: Vec<Option<&Value>> = maps.iter().map(|m| m.and_then(|m| m.get(key))).collect();
            (key.clone(), merge_values(&values, weights))
        })
        .collect()
}

/// One figure over every shard (none where a shard lacks it): whole numbers add up, other
/// numbers are averaged with `weights`, objects merge key by key, a value every shard agrees on
/// stays, and the rest become a list of the shards' values.
fn merge_values(values: &[Option<&Value>], weights: &[f64]) -> Value {
    let present: Vec<&Value> = values.iter().flatten().copied().collect();
    if present.iter().all(|v| v.is_u64()) {
        Value::from(present.iter().filter_map(|v| v.as_u64()).sum::<u64>())
    } else if present.iter().all(|v| v.is_number()) {
        let (mut total, mut weight) = (0.0, 0.0);
        for (v, w) in values.iter().zip(weights) {
            if let Some(x) = v.and_then(Value::as_f64) {
                total += x * w;
                weight += w;
            }
        }
        Value::from(if weight > 0.0 { total / weight } else { 0.0 })
    } else if present.iter().all(|v| v.is_object()) {
        let maps: Vec<Option<&Map<String, Value>>> = values.iter().map(|v| v.and_then(Value::as_object)).collect();
        Value::Object(merge_maps(&maps, weights))
    } else if present.iter().all(|v| v.is_array()) && same_lengths(&present) {
        let len = present[0].as_array().map_or(0, Vec::len);
        Value::Array(
            (0..len)
                .map(|k| {
                    let items: Vec<Option<&Value>> =
                        values.iter().map(|v| v.and_then(|v| v.as_array()).map(|a| &a[k])).collect();
                    merge_values(&items, weights)
                })
                .collect(),
        )
    } else if values.iter().all(|v| *v == values[0]) {
        present.first().map_or(Value::Null, |v| (*v).clone())
    } else {
        Value::Array(values.iter().map(|v| v.cloned().unwrap_or(Value::Null)).collect())
    }
}

fn same_lengths(arrays: &[&Value]) -> bool {
    let lens: Vec<usize> = arrays.iter().filter_map(|v| v.as_array().map(Vec::len)).collect();
    lens.windows(2).all(|w| w[0] == w[1])
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(rows_in: u64, extra: Value) -> StageReport {
        let mut s = StageReport::new("gen", "model.diffuse", std::time::Duration::from_secs(1), Map::new());
        s.rows_in = rows_in;
        s.rows_out = rows_in;
        s.seconds = 0.5;
        s.extra = extra.as_object().unwrap().clone();
        s
    }

    #[test]
    fn shard_files_are_told_from_other_objects() {
        assert!(is_shard_file("run-00003-of-00016.json"));
        assert!(is_shard_file("rejects-00000-of-00001.jsonl"));
        assert!(!is_shard_file("run.json"));
        assert!(!is_shard_file("rejects.jsonl"));
        assert!(!is_shard_file("run-00003-of-00016.jsonl"));
        assert!(!is_shard_file("run-x-of-00016.json"));
        assert_eq!(prefix("s3://b/runs"), "s3://b/runs/");
        assert_eq!(prefix("s3://b/runs/"), "s3://b/runs/");
    }

    #[test]
    fn parts_name_their_run() {
        assert_eq!(part_count("part-00003-of-00016.parquet"), Some(16));
        assert_eq!(part_count("part-00003-of-00016-1.csv"), Some(16));
        assert_eq!(part_count("part-0.parquet"), None);
        assert_eq!(part_count("samples.parquet"), None);
    }

    #[test]
    fn figures_add_up_and_rates_are_weighted() {
        let a = stage(30, serde_json::json!({"model_runs": 3, "rate": 1.0, "scheduler": "ddim", "key": "a"}));
        let b = stage(10, serde_json::json!({"model_runs": 2, "rate": 0.0, "scheduler": "ddim", "key": "b"}));
        let m = merge_stage(&[&a, &b]);
        assert_eq!((m.rows_in, m.rows_out, m.seconds, m.wall_seconds), (40, 40, 1.0, 1.0));
        assert_eq!(m.rows_per_second, 40.0);
        assert_eq!(m.extra["model_runs"], 5);
        assert_eq!(m.extra["rate"], 0.75);
        assert_eq!(m.extra["scheduler"], "ddim");
        assert_eq!(m.extra["key"], serde_json::json!(["a", "b"]));
        let a = stage(1, serde_json::json!({"cache": [{"key": "k", "hits": 1}], "by": {"n": 1, "name": "x"}}));
        let b = stage(1, serde_json::json!({"cache": [{"key": "k", "hits": 2}], "by": {"n": 2, "name": "x"}}));
        let m = merge_stage(&[&a, &b]);
        assert_eq!(m.extra["cache"], serde_json::json!([{"key": "k", "hits": 3}]));
        assert_eq!(m.extra["by"], serde_json::json!({"n": 3, "name": "x"}));
    }
}
