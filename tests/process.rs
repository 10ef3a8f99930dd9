//! Process plugins end to end: the describe step under `pipe validate`, schema mismatches, and a
//! plugin that crashes, hangs, writes garbage or exits early, with on_error = "fail" and "skip".
//! The misbehaving plugin is tests/fixtures/plugins/misbehave.py (Python SDK); the Rust plugin is
//! plugins/process-rust. The Python plugins run with the interpreter `scripts/setup --python`
//! prepares in .pipe/venv (see common::pipe).

mod common;

use std::path::{Path, PathBuf};

use common::{pipe, read_parquet, repo, run_json, text, write};

/// 20 rows with ids "0".."19", in batches of 4 (and messages of 4 rows to the plugin).
fn data(dir: &Path) {
    let mut csv = String::from("text\n");
    for i in 0..20 {
        csv.push_str(&format!("row {i} text\n"));
    }
    write(dir, "rows.csv", csv);
}

fn misbehave() -> String {
    repo().join("tests/fixtures/plugins/misbehave.py").display().to_string()
}

/// A pipeline: rows -> the misbehaving plugin (mode, at row `at`) -> out.parquet.
fn pipeline(dir: &Path, mode: &str, at: &str, on_error: &str, timeout: u32) -> PathBuf {
    data(dir);
    write(
        dir,
        "pipeline.toml",
        format!(
            r#"[pipeline]
name = "plugin-test"
batch_size = 4
on_error = "{on_error}"
max_rejects = -1

[[stage]]
id = "rows"
uses = "collect.table"
path = "rows.csv"

[[stage]]
id = "plug"
uses = "process"
command = ["python3", "{script}"]
params = {{ mode = "{mode}", at = "{at}" }}
timeout = {timeout}
batch_rows = 4

[[stage]]
id = "out"
uses = "sink.table"
path = "out.parquet"
"#,
            script = misbehave()
        ),
    )
}

fn run(path: &Path) -> std::process::Output {
    let out_dir = path.parent().unwrap().join("out");
    pipe().arg("run").arg(path).arg("--output-dir").arg(out_dir).arg("--quiet").output().unwrap()
}

fn ids_written(dir: &Path) -> Vec<String> {
    let batch = read_parquet(&dir.join("out/out.parquet"));
    let ids = batch.column_by_name("id").unwrap();
    let ids = ids.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    ids.iter().map(|i| i.unwrap().to_string()).collect()
}

fn rejects(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("out/rejects.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The plugin pids misbehave.py announced on stderr ("misbehave: pid N").
fn announced_pids(output: &str) -> Vec<u32> {
    output.lines().filter_map(|l| l.split("misbehave: pid ").nth(1)).map(|p| p.trim().parse().unwrap()).collect()
}

/// Asserts that none of these plugin processes still exists (running, or a zombie nobody
/// reaped).
fn assert_all_gone(pids: &[u32], what: &str) {
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{what}: plugin {pid} was left behind");
    }
}

#[test]
fn a_well_behaved_plugin_passes_every_row_and_forwards_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    // Input batches of 4 rows joined into messages of up to 12 rows: 12 + 8.
    let t = std::fs::read_to_string(&path).unwrap().replace("batch_rows = 4", "batch_rows = 12");
    std::fs::write(&path, t).unwrap();
    let out = run(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(ids_written(dir.path()), expected);
    let batch = read_parquet(&dir.path().join("out/out.parquet"));
    assert!(batch.column_by_name("seen").is_some());
    // The plugin's stderr reaches pipe's, marked with the stage id.
    assert!(text(&out).contains("[plug] misbehave: pid "), "{}", text(&out));
    let report = run_json(&dir.path().join("out"));
    let plug = &report["stages"][1];
    assert_eq!(plug["batches"], 2);
    assert_eq!(plug["restarts"], 0);
    assert_all_gone(&announced_pids(&text(&out)), "ok");
}

#[test]
fn validate_reports_the_plugins_config_error_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "config-error", "7", "fail", 30);
    let out = pipe().arg("validate").arg(&path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("stage \"plug\""), "{all}");
    assert!(all.contains("`params.at`"), "{all}");
    // Located at the `params` line of the pipeline file.
    assert!(all.contains("pipeline.toml:16"), "{all}");
}

#[test]
fn validate_starts_the_plugin_and_checks_the_graph_against_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    let text_in = std::fs::read_to_string(&path).unwrap();
    // The plugin's declared output feeds a stage that needs a column it does not have.
    let broken = text_in.replace(
        "[[stage]]\nid = \"out\"",
        "[[stage]]\nid = \"words\"\nuses = \"text.stats\"\ncolumn = \"seen_text\"\n\n[[stage]]\nid = \"out\"",
    );
    std::fs::write(&path, broken).unwrap();
    let out = pipe().arg("validate").arg(&path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("seen_text") && all.contains("seen"), "{all}");
    assert!(!dir.path().join("out").exists(), "validate wrote outputs");
}

#[test]
fn a_plugin_that_cannot_start_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    let t = std::fs::read_to_string(&path).unwrap().replace("\"python3\", ", "\"./no-such-plugin\", ");
    std::fs::write(&path, t).unwrap();
    let out = pipe().arg("validate").arg(&path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("cannot start") && all.contains("no-such-plugin"), "{all}");
}

#[test]
fn a_schema_mismatch_names_both_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "wrong-schema", "", "skip", 30);
    let out = run(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("stage `plug`"), "{all}");
    assert!(
        all.contains("declared its output as") && all.contains("seen Int64") && all.contains("seen Float32"),
        "{all}"
    );
    assert!(!dir.path().join("out/out.parquet").exists(), "a failed run committed its table");
}

/// The failure modes, what pipe says about each, and the row the plugin fails on ("7": the
/// second batch, rows 4..7).
const FAILURES: [(&str, &str); 4] = [
    ("crash", "crashed (exit status 3)"),
    ("hang", "timed out after 2 s"),
    ("garbage", "wrote garbage to stdout: \"hello from print\""),
    ("exit", "exited early (exit status 0)"),
];

#[test]
fn a_failing_plugin_stops_the_run_naming_the_stage_and_the_rows() {
    for (mode, words) in FAILURES {
        let dir = tempfile::tempdir().unwrap();
        let path = pipeline(dir.path(), mode, "7", "fail", 2);
        let out = run(&path);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{mode}: {all}");
        assert!(all.contains("stage `plug`"), "{mode}: {all}");
        assert!(all.contains(words), "{mode}: {all}");
        assert!(all.contains("batch 1 (4 rows: `4`, `5`, `6`, `7`)"), "{mode}: {all}");
        if mode == "crash" {
            // The traceback-like last words of the plugin are quoted.
            assert!(all.contains("its last stderr lines:") && all.contains("misbehave: crashing on 7"), "{all}");
        }
        assert!(!dir.path().join("out/out.parquet").exists(), "{mode}: a failed run committed its table");
        let pids = announced_pids(&all);
        assert!(!pids.is_empty(), "{mode}: {all}");
        assert_all_gone(&pids, mode);
    }
}

/// With skip, the failed message's rows are retried one at a time by a fresh process, so only
/// the row the plugin fails on is rejected; a third process takes over after it.
#[test]
fn with_skip_only_the_row_a_plugin_fails_on_is_rejected_and_a_fresh_process_goes_on() {
    for (mode, words) in FAILURES {
        let dir = tempfile::tempdir().unwrap();
        let path = pipeline(dir.path(), mode, "7", "skip", 2);
        let out = run(&path);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{mode}: {all}");
        let expected: Vec<String> = (0..20).filter(|i| *i != 7).map(|i| i.to_string()).collect();
        assert_eq!(ids_written(dir.path()), expected, "{mode}: {all}");
        let rejected = rejects(dir.path());
        let ids: Vec<&str> = rejected.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["7"], "{mode}");
        let first_words = words.split(':').next().unwrap();
        for r in &rejected {
            assert_eq!(r["stage"], "plug");
            assert!(r["reason"].as_str().unwrap().contains(first_words), "{mode}: {r}");
        }
        let report = run_json(&dir.path().join("out"));
        assert_eq!(report["stages"][1]["restarts"], 2, "{mode}");
        assert!(all.contains("retries those rows one at a time"), "{mode}: {all}");
        assert!(all.contains("batch 6 (1 row: `7`); the row goes to rejects.jsonl"), "{mode}: {all}");
        let pids = announced_pids(&all);
        assert_eq!(pids.len(), 3, "{mode}: the first plugin, the one retrying rows, the one after: {all}");
        assert_all_gone(&pids, mode);
    }
}

#[test]
fn row_errors_and_failed_batches_follow_on_error() {
    // A row error names the row.
    let dir = tempfile::tempdir().unwrap();
    let out = run(&pipeline(dir.path(), "row-error", "13", "fail", 30));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("stage `plug`") && all.contains("row `13`: bad row"), "{all}");

    let dir = tempfile::tempdir().unwrap();
    let out = run(&pipeline(dir.path(), "row-error", "13", "skip", 30));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rejected = rejects(dir.path());
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0]["id"].as_str(), rejected[0]["reason"].as_str()), (Some("13"), Some("bad row")));
    assert_eq!(ids_written(dir.path()).len(), 19);

    // An exception in the plugin fails its batch; the same process retries the rows one at a
    // time, and only the row it fails on is rejected.
    let dir = tempfile::tempdir().unwrap();
    let out = run(&pipeline(dir.path(), "raise", "13", "skip", 30));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rejected = rejects(dir.path());
    let ids: Vec<&str> = rejected.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["13"]);
    assert!(rejected[0]["reason"].as_str().unwrap().contains("ValueError: boom"), "{rejected:?}");
    assert_eq!(ids_written(dir.path()).len(), 19);
    assert_eq!(run_json(&dir.path().join("out"))["stages"][1]["restarts"], 0);

    let dir = tempfile::tempdir().unwrap();
    let out = run(&pipeline(dir.path(), "raise", "13", "fail", 30));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("failed on batch 3 (4 rows: `12`, `13`, `14`, `15`): ValueError: boom"), "{all}");
}

/// The Rust plugin (plugins/process-rust), built beside the pipe binary.
fn dedup_plugin() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_pipe"));
    exe.parent().unwrap().join("pipe-plugin-dedup")
}

#[test]
fn a_plugin_in_rust_speaks_the_same_protocol() {
    let plugin = dedup_plugin();
    assert!(plugin.is_file(), "{} is built by `cargo build --workspace`", plugin.display());
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "notes.csv", "text\nHello  world\nsomething else\nhello world\nSOMETHING ELSE\nnew\n");
    let path = write(
        dir.path(),
        "pipeline.toml",
        format!(
            r#"[pipeline]
name = "dedup"
batch_size = 2

[[stage]]
id = "notes"
uses = "collect.table"
path = "notes.csv"

[[stage]]
id = "dedup"
uses = "process"
command = ["{}"]
params = {{ column = "text" }}
batch_rows = 2

[[stage]]
id = "out"
uses = "sink.table"
path = "out.parquet"
"#,
            plugin.display()
        ),
    );
    let out = pipe().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Duplicates across batches are dropped (case and spacing ignored).
    assert_eq!(ids_written(dir.path()), ["0", "1", "4"]);

    let bad = std::fs::read_to_string(&path).unwrap().replace("column = \"text\"", "column = \"txt\"");
    std::fs::write(&path, bad).unwrap();
    let out = pipe().arg("validate").arg(&path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("stage \"dedup\"") && all.contains("`params.column`"), "{all}");
}

/// The Python interpreter of .pipe/venv (made by `scripts/setup --python`, which scripts/test runs).
fn venv_python() -> PathBuf {
    let python = repo().join(".pipe/venv/bin/python3");
    assert!(python.is_file(), "no {}: run scripts/setup --no-build --python", python.display());
    python
}

#[test]
fn the_python_sdk_passes_its_own_protocol_tests() {
    // plugins/python/tests/test_sdk.py drives real plugin processes over the protocol, written
    // from PROTOCOL.md alone: describe, params checking, both modes, every failure answer.
    let out = std::process::Command::new(venv_python())
        .arg(repo().join("plugins/python/tests/test_sdk.py"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_python_plugin_examples_measure_filter_and_score() {
    let dir = tempfile::tempdir().unwrap();
    let images = repo().join("examples/python-plugins/pipeline.toml");
    let out = pipe().arg("run").arg(&images).arg("--output-dir").arg(dir.path()).arg("--quiet").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = read_parquet(&dir.path().join("digits.parquet"));
    // 14 of the 360 digits fail the quality check (too little or too much ink, or blurry).
    assert_eq!(table.num_rows(), 346);
    let report = run_json(dir.path());
    assert_eq!(report["stages"][1]["id"], "quality");
    assert_eq!(report["stages"][2]["filtered"], 14, "{report}");
    let sharpness = table.column_by_name("sharpness").unwrap();
    let sharpness = sharpness.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    assert!(sharpness.iter().all(|s| s.unwrap() >= 0.02));

    let dir = tempfile::tempdir().unwrap();
    let notes = repo().join("examples/python-plugins/text.toml");
    let out = pipe().arg("run").arg(&notes).arg("--output-dir").arg(dir.path()).arg("--quiet").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.path().join("keywords.csv")).unwrap();
    let first: Vec<&str> = csv.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(first, ["id", "gan.txt", "diffusion.txt", "transformer.txt", "vae.txt"], "{csv}");
}

#[test]
fn the_plugin_printed_in_protocol_md_runs_as_printed() {
    // The SDK-less Python plugin at the end of plugins/PROTOCOL.md, verbatim.
    let doc = std::fs::read_to_string(repo().join("plugins/PROTOCOL.md")).unwrap();
    let start = doc.rfind("```python\n").expect("a Python block") + "```python\n".len();
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "raw.py", code);
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    let t = std::fs::read_to_string(&path).unwrap().replace(&misbehave(), "raw.py");
    std::fs::write(&path, t).unwrap();
    let out = run(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(ids_written(dir.path()), expected);
    assert_eq!(run_json(&dir.path().join("out"))["stages"][1]["batches"], 5);
}

#[test]
fn a_plugin_that_fails_on_every_row_stops_the_run_even_with_skip() {
    // at = "" makes misbehave.py crash on the first row of every batch: the plugin is broken,
    // not the rows, and restarting it forever would only throw the data away.
    let dir = tempfile::tempdir().unwrap();
    let out = run(&pipeline(dir.path(), "crash", "", "skip", 30));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("5 failures in a row without an answer"), "{all}");
    assert_all_gone(&announced_pids(&all), "plugin");
}

#[test]
fn pipe_log_debug_shows_the_protocol_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    let out = pipe().arg("run").arg(&path).arg("--quiet").env("PIPE_LOG", "debug").output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for needle in [
        "plugin started",
        "to plugin: describe",
        "\"type\":\"schema\"",
        "to plugin: batch",
        "\"type\":\"result\"",
        "to plugin: end",
        "\"type\":\"bye\"",
    ] {
        assert!(all.contains(needle), "{needle}: {all}");
    }
}

/// A pipeline with an inline Python plugin `code` (run with the SDK) in place of misbehave.py.
fn inline_plugin(dir: &Path, code: &str) -> PathBuf {
    write(dir, "plugin.py", code);
    let path = pipeline(dir, "ok", "", "skip", 30);
    let t = std::fs::read_to_string(&path).unwrap().replace(&misbehave(), "plugin.py");
    std::fs::write(&path, t).unwrap();
    path
}

#[test]
fn rows_held_back_arrive_with_bye() {
    // Holds every batch and sends them all, newest first, when pipe says end.
    let code = r#"
from pipe_plugin import stage
import pyarrow as pa

@stage(schema=lambda input_schema, params: input_schema)
def hold(batch, ctx):
    ctx.state.setdefault("held", []).append(batch)
    return None

@hold.finish
def finish(ctx):
    return pa.Table.from_batches(ctx.state["held"][::-1])

if __name__ == "__main__":
    hold.run()
"#;
    let dir = tempfile::tempdir().unwrap();
    let out = run(&inline_plugin(dir.path(), code));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut expected: Vec<String> = Vec::new();
    for start in [16, 12, 8, 4, 0] {
        expected.extend((start..start + 4).map(|i| i.to_string()));
    }
    assert_eq!(ids_written(dir.path()), expected);
}

#[test]
fn a_plugin_that_breaks_the_protocol_is_stopped_naming_what_it_did() {
    // Reports an error for a row that is not in the batch it answers.
    let code = r#"
import io, json, sys
import pyarrow as pa

inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(header, data=b""):
    out.write((json.dumps({**header, "bytes": len(data)}) + "\n").encode() + data)
    out.flush()
while True:
    header = json.loads(inp.readline())
    payload = inp.read(header.get("bytes") or 0)
    if header["type"] == "describe":
        send({"type": "schema", "protocol": 1}, payload)
    elif header["type"] == "batch":
        send({"type": "result", "seq": header["seq"], "errors": [{"id": "nobody", "reason": "?"}]})
    else:
        send({"type": "bye"})
        break
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = inline_plugin(dir.path(), code);
    let t = std::fs::read_to_string(&path).unwrap().replace("on_error = \"skip\"", "on_error = \"fail\"");
    std::fs::write(&path, t).unwrap();
    let out = run(&path);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("broke the protocol: reported an error for row `nobody`, not in its batch"), "{all}");
    assert!(all.contains("batch 0 (4 rows: `0`, `1`, `2`, `3`)"), "{all}");
}

#[test]
fn refine_iterate_re_runs_a_process_plugin_and_it_says_bye() {
    // The plugin adds seen = 1; `until` wants 2, so every row is retried to the last round,
    // through the same plugin process: the retry loop re-runs the span's stages, each built once.
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "ok", "", "fail", 30);
    let t = std::fs::read_to_string(&path).unwrap().replace(
        "[[stage]]\nid = \"out\"",
        "[[stage]]\nid = \"again\"\nuses = \"refine.iterate\"\nstages = [\"plug\"]\nuntil = \"seen = 2\"\n\
         max_rounds = 3\nscore = \"seen\"\n\n[[stage]]\nid = \"out\"",
    );
    std::fs::write(&path, t).unwrap();
    let out = pipe().arg("run").arg(&path).arg("--quiet").env("PIPE_LOG", "debug").output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let batch = read_parquet(&dir.path().join("out/out.parquet"));
    let attempts = batch.column_by_name("attempts").unwrap();
    let attempts = attempts.as_any().downcast_ref::<arrow::array::Int32Array>().unwrap();
    assert_eq!(attempts.len(), 20);
    assert!(attempts.iter().all(|a| a == Some(3)), "{attempts:?}");
    assert_eq!(run_json(&dir.path().join("out"))["stages"][2]["rows_rerun"], 40);
    // The one process ends with the handshake.
    assert_eq!(all.matches("\"type\":\"bye\"").count(), 1, "{all}");
    assert_all_gone(&announced_pids(&all), "plugin");
}

/// A run builds the stages after a plugin from the declaration the plugin made last time (kept in
/// the cache folder) while the plugin starts; its own answer is checked at first use, and a
/// plugin that declares something else now stops the run before any row is written, naming the
/// stage, with the kept declaration updated for the next run.
#[test]
fn a_kept_declaration_is_used_while_the_plugin_starts_and_checked_at_first_use() {
    let dir = tempfile::tempdir().unwrap();
    data(dir.path());
    let script = repo().join("tests/fixtures/plugins/env_column.py");
    let path = write(
        dir.path(),
        "pipeline.toml",
        format!(
            r#"[pipeline]
name = "kept-declaration"
batch_size = 4

[[stage]]
id = "rows"
uses = "collect.table"
path = "rows.csv"

[[stage]]
id = "plug"
uses = "process"
command = ["python3", "{}"]

[[stage]]
id = "out"
uses = "sink.table"
path = "out.parquet"
"#,
            script.display()
        ),
    );
    let run = |extra: Option<&str>| {
        let mut c = pipe();
        c.arg("run").arg(&path).arg("--output-dir").arg(dir.path().join("out")).arg("--quiet");
        c.env("PIPE_LOG", "pipe_process=debug");
        match extra {
            Some(name) => c.env("EXTRA_COLUMN", name),
            None => c.env_remove("EXTRA_COLUMN"),
        };
        let out = c.output().unwrap();
        (out.status.code(), text(&out))
    };
    let all: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let kept = "built from the kept declaration";

    let (code, first) = run(None);
    assert_eq!(code, Some(0), "{first}");
    assert!(!first.contains(kept), "nothing was kept before the first run: {first}");
    assert_eq!(ids_written(dir.path()), all);

    let (code, second) = run(None);
    assert_eq!(code, Some(0), "{second}");
    assert!(second.contains(kept), "{second}");
    assert_eq!(ids_written(dir.path()), all);

    let (code, third) = run(Some("extra"));
    assert_eq!(code, Some(1), "{third}");
    assert!(third.contains(kept), "{third}");
    assert!(third.contains("plug") && third.contains("declares (") && third.contains("run again"), "{third}");

    let (code, fourth) = run(Some("extra"));
    assert_eq!(code, Some(0), "{fourth}");
    assert!(fourth.contains(kept), "the updated declaration is kept: {fourth}");
    let table = read_parquet(&dir.path().join("out/out.parquet"));
    assert_eq!(table.num_rows(), 20);
    assert!(table.column_by_name("extra").is_some(), "{:?}", table.schema());
}

/// rows -> tests/fixtures/plugins/rowwise.py (it promises row-wise; deterministic when
/// `deterministic`) with params.misbehave = `misbehave` -> out.parquet.
fn rowwise_pipeline(dir: &Path, misbehave: &str, deterministic: bool) -> PathBuf {
    data(dir);
    let script = repo().join("tests/fixtures/plugins/rowwise.py");
    write(
        dir,
        "pipeline.toml",
        format!(
            r#"[pipeline]
name = "rowwise"
batch_size = 4

[[stage]]
id = "rows"
uses = "collect.table"
path = "rows.csv"

[[stage]]
id = "plug"
uses = "process"
command = ["python3", "{}"]
params = {{ misbehave = "{misbehave}" }}
env = {{ ROWWISE_DETERMINISTIC = "{}" }}
batch_rows = 8

[[stage]]
id = "out"
uses = "sink.table"
path = "out.parquet"
"#,
            script.display(),
            if deterministic { "1" } else { "0" }
        ),
    )
}

/// The rows rowwise.py said it got, from its "rowwise: N rows" stderr lines.
fn rows_sent(output: &str) -> usize {
    output
        .lines()
        .filter_map(|l| l.split("rowwise: ").nth(1))
        .map(|n| n.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum()
}

#[test]
fn a_plugin_that_breaks_its_row_wise_promise_stops_the_run_naming_the_stage_and_the_row() {
    // Batches of 4 rows are joined into messages of 8 (the plugin is not deterministic, so it is
    // pipelined); the first message holds rows 0-7.
    for (misbehave, named) in [
        ("drop", "leaves out row `1`"),
        ("add", "adds row `extra`"),
        ("reorder", "has row `1` where row `0` was due"),
        ("hold", "sent 1 rows with bye, the first `0`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&rowwise_pipeline(dir.path(), misbehave, false));
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{misbehave}: {all}");
        assert!(
            all.contains("plug") && all.contains("promises to be row-wise") && all.contains(named),
            "{misbehave}: {all}"
        );
        if misbehave != "hold" {
            assert!(all.contains("batch 0 (8 rows: `0` ... `7`)"), "{misbehave}: {all}");
        }
        assert!(!dir.path().join("out/out.parquet").exists(), "{misbehave}: nothing is finalized");
    }
}

/// A plugin that promises to be row-wise and deterministic is cached per row: a rerun of the
/// unchanged pipeline sends it no row, with the same output; `--no-cache` sends every row again.
/// One that promises row-wise only is not cached (and still pipelined: messages of 8 rows).
#[test]
fn a_row_wise_deterministic_plugin_is_answered_from_the_per_row_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = rowwise_pipeline(dir.path(), "", true);
    let run_with = |extra: &[&str]| {
        let out_dir = dir.path().join("out");
        let out = pipe().arg("run").arg(&path).arg("--output-dir").arg(&out_dir).args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let table = std::fs::read(out_dir.join("out.parquet")).unwrap();
        (rows_sent(&text(&out)), run_json(&out_dir)["stages"][1].clone(), table)
    };
    let (sent, first, table) = run_with(&[]);
    assert_eq!(sent, 20);
    assert_eq!((first["cache"]["hits"].as_u64(), first["cache"]["misses"].as_u64()), (Some(0), Some(20)), "{first}");
    assert_eq!((first["row_wise"].as_bool(), first["deterministic"].as_bool()), (Some(true), Some(true)), "{first}");
    let upper = read_parquet(&dir.path().join("out/out.parquet"));
    let upper = upper.column_by_name("upper").unwrap().as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    assert_eq!(upper.value(13), "13");

    let (sent, second, again) = run_with(&[]);
    assert_eq!(sent, 0, "the rerun sends the plugin no row");
    assert_eq!((second["cache"]["hits"].as_u64(), second["cache"]["misses"].as_u64()), (Some(20), Some(0)), "{second}");
    assert!(again == table, "the cached run writes the same bytes");

    let (sent, third, again) = run_with(&["--no-cache"]);
    assert_eq!(sent, 20);
    assert_eq!(third["cache"]["misses"].as_u64(), Some(20), "{third}");
    assert!(again == table);

    let other = tempfile::tempdir().unwrap();
    let path = rowwise_pipeline(other.path(), "", false);
    for _ in 0..2 {
        let out = pipe().arg("run").arg(&path).arg("--output-dir").arg(other.path().join("out")).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(rows_sent(&text(&out)), 20, "not deterministic: not cached");
        let stage = &run_json(&other.path().join("out"))["stages"][1];
        assert!(stage.get("cache").is_none(), "{stage}");
        assert_eq!(stage["batches"], 3, "{stage}");
    }
}
