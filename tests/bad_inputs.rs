//! One table-driven test over the corpus of bad inputs (tests/bad): for each case, the exit code,
//! the message, no panic or abort, and rows written + rows rejected = rows in the input.

mod bad;
mod common;

use std::path::Path;

use bad::Case;
use common::{pipe_output, read_parquet, run_json, text};

fn check(case: &Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    (case.setup)(dir.path());
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let out = pipe_output(&args, dir.path());
    let all = text(&out);
    let shown = || all.chars().take(3000).collect::<String>();
    if all.contains("panicked") || out.status.code().is_none() || out.status.code() == Some(101) {
        return Err(format!("panicked or aborted ({:?}):\n{}", out.status, shown()));
    }
    if out.status.code() != Some(case.exit) {
        return Err(format!("exit {:?}, expected {}:\n{}", out.status.code(), case.exit, shown()));
    }
    for word in &case.says {
        if !all.contains(word) {
            return Err(format!("output lacks {word:?}:\n{}", shown()));
        }
    }
    if let Some((total, parquet)) = case.rows {
        account(dir.path(), total, parquet).map_err(|e| format!("{e}\n{}", shown()))?;
        let rejects = dir.path().join(parquet).with_file_name("rejects.jsonl");
        let logged = std::fs::read_to_string(&rejects).unwrap_or_default();
        for word in &case.rejects {
            if !logged.contains(word.as_str()) {
                return Err(format!("rejects.jsonl lacks {word:?}:\n{}", excerpt(&logged)));
            }
        }
    }
    Ok(())
}

fn excerpt(text: &str) -> String {
    text.chars().take(3000).collect()
}

/// rows written + rows rejected (run.json, and the rejects.jsonl lines with their counts) = total.
fn account(dir: &Path, total: u64, parquet: &str) -> Result<(), String> {
    let path = dir.join(parquet);
    let written = if path.exists() { read_parquet(&path).num_rows() as u64 } else { 0 };
    let out_dir = path.parent().unwrap();
    let report = run_json(out_dir);
    let rejected = report["rejected"].as_u64().ok_or("run.json has no `rejected`")?;
    let in_file: u64 = std::fs::read_to_string(out_dir.join("rejects.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map_err(|e| format!("rejects.jsonl: {e}: {l}")))
        .map(|v| v.map(|v| v["rows"].as_u64().unwrap_or(1)))
        .sum::<Result<u64, String>>()?;
    if in_file != rejected {
        return Err(format!("rejects.jsonl counts {in_file} rows, run.json says {rejected}"));
    }
    if written + rejected != total {
        return Err(format!("{written} written + {rejected} rejected != {total} rows in the input"));
    }
    Ok(())
}

#[test]
fn every_bad_input_is_reported_and_every_row_accounted_for() {
    let cases: Vec<Case> =
        bad::tables::cases().into_iter().chain(bad::files::cases()).chain(bad::pipelines::cases()).collect();
    assert!(cases.len() >= 20, "the corpus has {} cases", cases.len());
    let failures: Vec<String> =
        cases.iter().filter_map(|c| check(c).err().map(|e| format!("--- {}: {e}", c.name))).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
