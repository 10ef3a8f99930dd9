//! Running pipelines end to end: outputs, determinism, per-item failures and on_error, validate
//! reading no data, Ctrl-C, and the informational verbs.

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray, UInt64Array};
use common::{pipe, pipe_output, read_parquet, run_json, text, write};

fn text_pipeline(sink_path: &str) -> String {
    format!(
        r#"[pipeline]
name = "t"
batch_size = 3

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
load = "text"

[[stage]]
id = "stats"
uses = "text.stats"

[[stage]]
id = "shout"
uses = "preprocess.sql"
query = "SELECT id, upper(text) AS text, words, blake3 FROM batch WHERE words > 1"

[[stage]]
id = "save"
uses = "sink.table"
path = "{sink_path}"
"#
    )
}

fn text_data(dir: &std::path::Path, n: usize) {
    for i in 0..n {
        write(dir, &format!("data/d{}/f{i:03}.txt", i % 3), format!("file number {i}\n{}", "word ".repeat(i % 5)));
    }
}

#[test]
fn a_text_pipeline_writes_what_it_computed() {
    let dir = tempfile::tempdir().unwrap();
    text_data(dir.path(), 10);
    write(dir.path(), "data/one.txt", "single");
    write(dir.path(), "p.toml", text_pipeline("t.parquet"));
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = read_parquet(&dir.path().join("out/t.parquet"));
    assert_eq!(t.num_rows(), 10, "one.txt has one word and is filtered out");
    let ids = t.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let mut sorted: Vec<&str> = ids.iter().map(Option::unwrap).collect();
    sorted.sort();
    assert_eq!(ids.iter().map(Option::unwrap).collect::<Vec<_>>(), sorted, "rows stay in id order");
    assert_eq!(ids.value(0), "d0/f000.txt");
    let texts = t.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(texts.value(0), "FILE NUMBER 0\n");
    let words = t.column_by_name("words").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
    let row = ids.iter().position(|i| i == Some("d1/f004.txt")).unwrap();
    assert_eq!(words.value(row), 3 + 4);
    let report = run_json(&dir.path().join("out"));
    assert_eq!(report["status"], "ok");
    assert_eq!(report["pipeline"], "t");
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    assert_eq!(stages[0]["rows_out"], 11);
    assert_eq!(stages[2]["rows_in"], 11);
    assert_eq!(stages[2]["rows_out"], 10);
    assert_eq!(stages[2]["filtered"], 1);
    for s in stages {
        for key in ["id", "uses", "rows_in", "rows_out", "rejected", "seconds"] {
            assert!(s.get(key).is_some(), "run.json stage lacks {key}");
        }
    }
    assert!(!dir.path().join("out/rejects.jsonl").exists());
}

#[test]
fn two_runs_write_byte_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    text_data(dir.path(), 40);
    for file in ["t.parquet", "t.csv", "t.jsonl", "t.arrow"] {
        let pipeline = text_pipeline(file).replace("batch_size = 3", "batch_size = 7");
        write(dir.path(), "p.toml", &pipeline);
        let mut outputs = Vec::new();
        for run in ["a", "b"] {
            let out = pipe_output(&["run", "p.toml", "--output-dir", run, "--quiet"], dir.path());
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            outputs.push(std::fs::read(dir.path().join(run).join(file)).unwrap());
        }
        assert!(!outputs[0].is_empty());
        assert_eq!(outputs[0], outputs[1], "{file} differs between runs");
    }
}

fn csv_pipeline(on_error: &str, max_rejects: i64) -> String {
    format!(
        r#"[pipeline]
name = "tables"
on_error = "{on_error}"
max_rejects = {max_rejects}

[[stage]]
id = "rows"
uses = "collect.table"
path = "tables/*.csv"

[[stage]]
id = "save"
uses = "sink.table"
path = "rows.csv"
"#
    )
}

#[test]
fn a_malformed_file_among_several_follows_on_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tables/a.csv", "name,score\nann,1\nbob,2\n");
    write(dir.path(), "tables/b.csv", "name,score\ncid,3\ndan,4,extra\n");
    write(dir.path(), "tables/c.csv", "name,score\neve,5\n");

    write(dir.path(), "p.toml", csv_pipeline("skip", -1));
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap();
    assert!(rows.starts_with("id,name,score\n0,ann,1\n1,bob,2\n"), "{rows}");
    assert!(rows.contains("eve,5"), "the file after the bad one is read: {rows}");
    assert!(!rows.contains("dan"), "{rows}");
    assert!(rows.contains("2,cid,3"), "the good row before the bad one in the same file is kept: {rows}");
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{rejects}");
    // Only the bad row is rejected, under its file and line.
    assert_eq!(lines[0]["id"], "tables/b.csv:3");
    assert_eq!(lines[0]["stage"], "rows");
    assert!(lines[0]["reason"].as_str().unwrap().contains("fields"), "{rejects}");
    assert_eq!(run_json(&dir.path().join("out"))["rejected"], 1);

    write(dir.path(), "p.toml", csv_pipeline("skip", 0));
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("max_rejects"), "{}", text(&out));
    assert_eq!(run_json(&dir.path().join("out"))["status"], "failed");

    write(dir.path(), "p.toml", csv_pipeline("fail", 0));
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("tables/b.csv"), "{}", text(&out));
    assert!(!dir.path().join("out/rows.csv").exists(), "a failed run commits no table");
    // A failed run keeps its journal when a sink committed rows before the failure, so that a
    // rerun resumes (README, "Guarantees"); nothing else is left.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".pipe-journal")
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("run.json")], "no temporary files are left");
}

#[test]
fn an_unreadable_file_is_a_per_item_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data/a.txt", "fine text here");
    write(dir.path(), "data/b.txt", [0xffu8, 0xfe, 0x00, 0x41]);
    write(dir.path(), "data/c.txt", "more fine text");
    let skip =
        text_pipeline("t.parquet").replace("batch_size = 3", "batch_size = 3\non_error = \"skip\"\nmax_rejects = -1");
    write(dir.path(), "p.toml", &skip);
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!((line["id"].as_str(), line["stage"].as_str()), (Some("b.txt"), Some("files")));
    assert!(line["reason"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(read_parquet(&dir.path().join("out/t.parquet")).num_rows(), 2);

    write(dir.path(), "p.toml", text_pipeline("t.parquet"));
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("b.txt"), "{}", text(&out));
}

fn wait_with_deadline(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn accessed(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().accessed().unwrap()
}

#[test]
fn validate_reads_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "data/a.txt", "some words here");
    write(dir.path(), "p.toml", text_pipeline("t.parquet"));
    // With relatime, a read updates an access time that is older than the modification time.
    let past = std::time::SystemTime::now() - Duration::from_secs(3600);
    let set_past = || {
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(past).set_modified(std::time::SystemTime::now())).unwrap();
    };
    set_past();
    let before = accessed(&file);
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(accessed(&file), before, "validate read the data file");
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(accessed(&file), before, "control: a run reads the file and updates its access time");

    // A folder that does not exist yet is reported, not an error.
    write(dir.path(), "p.toml", text_pipeline("t.parquet").replace("path = \"data\"", "path = \"later\""));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("does not exist yet"), "{}", text(&out));
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
}

#[test]
fn ctrl_c_stops_cleanly_and_flushes_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    const FILES: usize = 30_000;
    for i in 0..FILES {
        write(dir.path(), &format!("data/{:02}/{i:05}.txt", i / 1000), format!("file {i} of many"));
    }
    // One row per batch through SQL: several seconds of work, interrupted after one.
    let pipeline = text_pipeline("t.parquet").replace("batch_size = 3", "batch_size = 1");
    write(dir.path(), "p.toml", &pipeline);
    let mut child = pipe().args(["run", "p.toml", "--quiet"]).current_dir(dir.path()).process_group(0).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait_with_deadline(&mut child, Duration::from_secs(60)).expect("the run stops");
    assert_eq!(status.code(), Some(130), "the run ended before Ctrl-C, or ignored it");
    let report = run_json(&dir.path().join("out"));
    assert_eq!(report["status"], "interrupted");
    let rows = read_parquet(&dir.path().join("out/t.parquet")).num_rows();
    assert!(rows > 0 && rows < FILES, "{rows} rows flushed");
    assert_eq!(report["stages"][3]["rows_in"], rows, "every row the sink received was flushed");
    assert_eq!(report["stages"][2]["rows_in"], report["stages"][0]["rows_out"], "the queues drained");
}

#[test]
fn plugins_graph_and_doctor() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe_output(&["plugins"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    for name in ["collect.files", "collect.table", "preprocess.sql", "sink.table", "sink.files", "text.stats"] {
        assert!(text(&out).contains(name), "{name} missing from pipe plugins");
    }
    let out = pipe_output(&["plugins", "sink.files"], dir.path());
    let t = text(&out);
    assert!(t.contains("name (string; default \"{id}.txt\")"), "{t}");
    assert!(t.contains("The file name; `{column}` placeholders take the row's values."), "{t}");
    let out = pipe_output(&["plugins", "sink.tabel"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("did you mean \"sink.table\"?"));

    std::fs::create_dir(dir.path().join("data")).unwrap();
    write(dir.path(), "p.toml", text_pipeline("t.parquet"));
    let out = pipe_output(&["graph", "p.toml"], dir.path());
    assert!(text(&out).contains("s_files --> s_stats"), "{}", text(&out));
    let out = pipe_output(&["graph", "p.toml", "--format", "dot"], dir.path());
    assert!(text(&out).contains("\"shout\" -> \"save\";"), "{}", text(&out));

    // scripts/setup puts the library in .pipe/onnxruntime, where pipe finds it by itself.
    let out = pipe().arg("doctor").output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "run scripts/setup first: {t}");
    assert!(t.contains("ONNX Runtime 1.31.1: ") && t.contains("libonnxruntime.so.1.31.1 (from setup)"), "{t}");
    assert!(t.contains("CPUExecutionProvider"), "{t}");
    // And the Python that process plugins would get (common::pipe puts .pipe/venv first on PATH).
    assert!(t.contains("Python for process plugins: ") && t.contains("pyarrow 26.0.1, pipe_plugin 0.1.0"), "{t}");
    let out = pipe().arg("doctor").env("PATH", "/nonexistent").output().unwrap();
    assert!(text(&out).contains("no python3 on PATH"), "{}", text(&out));

    // A library the user names must exist; pipe says so instead of using another.
    let out = pipe().arg("doctor").env("ORT_DYLIB_PATH", dir.path().join("missing.so")).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("ORT_DYLIB_PATH names") && t.contains("does not exist") && t.contains("scripts/setup"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn sink_files_stays_inside_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data/a.txt", "alpha beta");
    write(dir.path(), "data/sub/b.txt", "gamma delta");
    let pipeline = r#"[pipeline]
name = "f"
on_error = "skip"
max_rejects = -1

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
load = "text"

[[stage]]
id = "q"
uses = "preprocess.sql"
query = "SELECT id, text, CASE WHEN id = 'a.txt' THEN '../escape' ELSE 'ok' END AS name FROM batch"

[[stage]]
id = "write"
uses = "sink.files"
column = "text"
name = "{name}/{id}"
"#;
    write(dir.path(), "p.toml", pipeline);
    let out = pipe_output(&["run", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("out/files/ok/sub/b.txt")).unwrap(), "gamma delta");
    assert!(!dir.path().join("out/escape").exists());
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert!(rejects.contains("\"id\":\"a.txt\"") && rejects.contains("leaves the folder"), "{rejects}");
}

#[test]
fn a_second_ctrl_c_stops_at_once_and_run_json_says_interrupted() {
    // Diffusion over many rows: model calls on every core when both signals arrive.
    let out_dir = tempfile::tempdir().unwrap();
    let example = common::repo().join("examples/diffusion/pipeline.toml");
    let mut child = pipe()
        .arg("run")
        .arg(&example)
        .args(["--set", "labels.count=2000", "--set", "generate.steps=50", "--quiet", "--output-dir"])
        .arg(out_dir.path())
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait_with_deadline(&mut child, Duration::from_secs(30)).expect("the run stops at once");
    assert_eq!(status.code(), Some(130), "{status:?}");
    let report = run_json(out_dir.path());
    assert_eq!(report["status"], "interrupted", "{report}");
    assert!(report.get("error").is_none(), "an interrupted run has no error: {report}");
    assert!(report["stages"][0]["rows_out"].as_u64().unwrap() > 0, "{report}");
    let left: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    assert!(!out_dir.path().join("samples.parquet").exists(), "nothing half-done is committed");
}
