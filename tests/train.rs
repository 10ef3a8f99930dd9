//! The train stage end to end: a small Python trainer (tests/fixtures/train/trainer.py, pyarrow
//! from .pipe/venv) fits k = mean(x) * scale and writes model.onnx, a copy of
//! tests/fixtures/onnx/half.onnx computing half = label * k, which a model stage of the same
//! pipeline loads as "@fit/model.onnx". The cache lives under each test's tempdir
//! (PIPE_CACHE_DIR); the trainer appends a line to marker.txt each time it is started.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float32Array, Int64Array};
use common::{pipe, read_parquet, repo, run_json, text, write};

/// The rows of the dataset: (id, x, label). mean(x) = 2, so k = 2 * scale.
const ROWS: [(&str, f64, i64); 5] = [("r0", 0.5, 1), ("r1", 1.5, 2), ("r2", 2.0, 3), ("r3", 4.0, 4), ("r4", 2.0, 5)];

fn jsonl(rows: &[(&str, f64, i64)]) -> String {
    rows.iter().map(|(id, x, label)| format!("{{\"id\": \"{id}\", \"x\": {x:?}, \"label\": {label}}}\n")).collect()
}

/// A pipeline folder with the trainer, the data and marker.txt's place.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let python = repo().join(".pipe/venv/bin/python3");
        assert!(python.is_file(), "no {}: run scripts/setup --no-build --python", python.display());
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo().join("tests/fixtures/train/trainer.py"), dir.path().join("trainer.py")).unwrap();
        write(dir.path(), "rows.jsonl", jsonl(&ROWS));
        write(dir.path(), "trainer_lib/helpers.py", "SCALE = 1\n");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    /// Runs `pipe run p.toml` with extra args and environment.
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = pipe();
        c.args(["run", "p.toml", "--quiet"]).args(args).current_dir(self.path()).env("PIPE_CACHE_DIR", self.cache());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn run(&self) -> Output {
        self.run_with(&[], &[])
    }

    /// Runs and expects success; returns the train stage's entry of run.json.
    fn run_ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run_with(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report = run_json(&self.path().join("out"));
        report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "fit").unwrap().clone()
    }

    /// How many times the trainer has been started.
    fn trainings(&self) -> usize {
        std::fs::read_to_string(self.path().join("marker.txt")).map_or(0, |t| t.lines().count())
    }

    /// The pids the trainer wrote to marker.txt.
    fn trainer_pids(&self) -> Vec<u32> {
        let t = std::fs::read_to_string(self.path().join("marker.txt")).unwrap_or_default();
        t.lines().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()).collect()
    }

    /// The complete cache entries of the train stage.
    fn entries(&self) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(self.cache().join("train")) else { return Vec::new() };
        dir.flatten().map(|e| e.path()).collect()
    }

    /// Scratch folders left under the cache.
    fn scratch(&self) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(self.cache().join("tmp")) else { return Vec::new() };
        dir.flatten().map(|e| e.path()).collect()
    }
}

/// The train stage's table, with `params` and more keys.
fn train_stage(params: &str, extra: &str) -> String {
    format!(
        r#"[[stage]]
id = "fit"
uses = "train"
input = "rows"
command = ["python3", "trainer.py", "{half}"]
params = {{ {params} }}
outputs = ["model.onnx"]
deps = ["trainer_lib"]
env = {{ TRAIN_MARKER = "marker.txt" }}
{extra}
"#,
        half = repo().join("tests/fixtures/onnx/half.onnx").display()
    )
}

/// collect.table -> train, then a second source -> model.onnx on the trained model -> sink.table.
fn full_pipeline(params: &str, sink: &str) -> String {
    format!(
        r#"[pipeline]
name = "train-test"
batch_size = 2

[[stage]]
id = "rows"
uses = "collect.table"
path = "rows.jsonl"
id_column = "id"

{train}
[[stage]]
id = "labels"
uses = "collect.table"
path = "rows.jsonl"
id_column = "id"

[[stage]]
id = "half"
uses = "model.onnx"
model = "@fit/model.onnx"
threads = 1

[[stage]]
id = "save"
uses = "sink.table"
path = "{sink}"
"#,
        train = train_stage(params, "")
    )
}

/// collect.table -> train only.
fn train_pipeline(params: &str, extra: &str) -> String {
    format!(
        "[pipeline]\nname = \"train-test\"\nbatch_size = 2\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
         path = \"rows.jsonl\"\nid_column = \"id\"\n\n{}",
        train_stage(params, extra)
    )
}

fn halves(path: &Path) -> Vec<(i64, f32)> {
    let batch = read_parquet(path);
    let labels = batch.column_by_name("label").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
    let half = batch.column_by_name("half").unwrap().as_any().downcast_ref::<Float32Array>().unwrap().clone();
    (0..batch.num_rows()).map(|i| (labels.value(i), half.value(i))).collect()
}

#[test]
fn a_trained_model_feeds_a_model_stage_in_the_same_run_and_the_rerun_is_a_cache_hit() {
    let p = Project::new();
    write(p.path(), "p.toml", full_pipeline("scale = 1.5, steps = 3", "out.parquet"));
    let fit = p.run_ok(&[]);
    assert_eq!(p.trainings(), 1);
    assert_eq!(fit["cache"], "miss", "{fit}");
    let key = fit["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "a blake3 hex key: {key}");
    assert_eq!(fit["steps"], 3);
    assert_eq!(fit["metrics"]["loss"], serde_json::json!([[1, 1.0], [2, 0.5], [3, 1.0 / 3.0]]));
    assert_eq!(fit["rows_in"], ROWS.len());

    // k = mean(x) * scale = 2 * 1.5, and the model computes label * k in float32.
    let mean = ROWS.iter().map(|r| r.1).sum::<f64>() / ROWS.len() as f64;
    let k = (mean * 1.5) as f32;
    let got = halves(&p.path().join("out/out.parquet"));
    let want: Vec<(i64, f32)> = ROWS.iter().map(|r| (r.2, r.2 as f32 * k)).collect();
    assert_eq!(got, want);

    let entries = p.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let model = std::fs::read(entries[0].join("model.onnx")).unwrap();
    let table = std::fs::read(p.path().join("out/out.parquet")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entries[0].join("meta.json")).unwrap()).unwrap();
    assert_eq!((meta["stage"].as_str(), meta["pipeline"].as_str()), (Some("fit"), Some("train-test")));
    assert!(p.scratch().is_empty(), "scratch folders are removed: {:?}", p.scratch());
    // pipe validate checks the model stage against the training the cache remembers.
    let out =
        pipe().args(["validate", "p.toml"]).current_dir(p.path()).env("PIPE_CACHE_DIR", p.cache()).output().unwrap();
    assert!(
        text(&out).contains("half (model.onnx) -> id: Utf8, label: Int64, x: Float64, half: Float32"),
        "{}",
        text(&out)
    );

    // The second run does not start the trainer and makes the same bytes.
    let started = Instant::now();
    let fit = p.run_ok(&[]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(p.trainings(), 1, "the trainer ran again");
    assert_eq!(fit["cache"], "hit", "{fit}");
    assert_eq!(fit["key"], key.as_str());
    assert_eq!(fit["metrics"]["loss"], serde_json::json!([[1, 1.0], [2, 0.5], [3, 1.0 / 3.0]]), "from meta.json");
    assert_eq!(fit["steps"], 3);
    assert_eq!(std::fs::read(entries[0].join("model.onnx")).unwrap(), model);
    assert_eq!(std::fs::read(p.path().join("out/out.parquet")).unwrap(), table, "the outputs are byte-identical");

    // A change downstream of the training is still a hit.
    write(p.path(), "p.toml", full_pipeline("scale = 1.5, steps = 3", "elsewhere.parquet"));
    assert_eq!(p.run_ok(&[])["cache"], "hit");
    assert_eq!(std::fs::read(p.path().join("out/elsewhere.parquet")).unwrap(), table);
    assert_eq!(p.trainings(), 1);
}

#[test]
fn the_key_covers_params_rows_seed_trainer_and_deps_but_not_batching() {
    let p = Project::new();
    let write_pipeline = |params: &str| write(p.path(), "p.toml", train_pipeline(params, ""));
    write_pipeline("scale = 2.0, steps = 2");
    let base = p.run_ok(&[]);
    assert_eq!(base["cache"], "miss");
    let key = base["key"].clone();
    let mut keys = vec![key.clone()];
    let mut expect_miss = |what: &str, fit: serde_json::Value, trainings: usize| {
        assert_eq!(fit["cache"], "miss", "{what}: {fit}");
        assert!(!keys.contains(&fit["key"]), "{what}: a key seen before");
        keys.push(fit["key"].clone());
        assert_eq!(p.trainings(), trainings, "{what}");
    };

    // The batch size changes how the rows arrive, not the dataset.
    let hit = p.run_ok(&["--set", "pipeline.batch_size=3"]);
    assert_eq!((hit["cache"].as_str(), &hit["key"]), (Some("hit"), &key));
    assert_eq!(p.trainings(), 1);

    write_pipeline("scale = 2.5, steps = 2");
    expect_miss("one param", p.run_ok(&[]), 2);
    // The same params in another order, as another TOML spelling, are the same params.
    write(p.path(), "p.toml", train_pipeline("steps = 2, scale = 2.0", ""));
    assert_eq!(p.run_ok(&[])["key"], key, "params key order");
    assert_eq!(p.trainings(), 2);

    let mut rows = ROWS;
    rows[3].1 = 4.5;
    write(p.path(), "rows.jsonl", jsonl(&rows));
    expect_miss("one row", p.run_ok(&[]), 3);
    // The same rows in another order of the file are the same dataset.
    let mut shuffled = ROWS;
    shuffled.reverse();
    write(p.path(), "rows.jsonl", jsonl(&shuffled));
    assert_eq!(p.run_ok(&[])["key"], key, "row order");
    assert_eq!(p.trainings(), 3);

    expect_miss("the seed", p.run_ok(&["--set", "pipeline.seed=7"]), 4);
    assert!(std::fs::read_to_string(p.path().join("marker.txt")).unwrap().ends_with("seed 7\n"), "PIPE_TRAIN_SEED");

    let script = p.path().join("trainer.py");
    let original = std::fs::read(&script).unwrap();
    let mut changed = original.clone();
    changed.push(b'\n');
    std::fs::write(&script, &changed).unwrap();
    expect_miss("one byte of the trainer", p.run_ok(&[]), 5);
    std::fs::write(&script, &original).unwrap();

    write(p.path(), "trainer_lib/helpers.py", "SCALE = 2\n");
    expect_miss("a file in deps", p.run_ok(&[]), 6);
    write(p.path(), "trainer_lib/helpers.py", "SCALE = 1\n");
    // Python's bytecode cache in a deps folder is not part of the trainer.
    write(p.path(), "trainer_lib/__pycache__/helpers.cpython-312.pyc", "bytecode");

    // Back where it started: the first entry is still there.
    let fit = p.run_ok(&[]);
    assert_eq!((fit["cache"].as_str(), &fit["key"]), (Some("hit"), &key));
    assert_eq!(p.trainings(), 6);
    assert_eq!(p.entries().len(), 6);

    // --no-cache trains again and replaces the entry.
    let fit = p.run_ok(&["--no-cache"]);
    assert_eq!((fit["cache"].as_str(), &fit["key"]), (Some("miss"), &key));
    assert_eq!(p.trainings(), 7);
    assert_eq!(p.entries().len(), 6);
    assert_eq!(p.run_ok(&[])["cache"], "hit");
}

/// Whether `pid` still runs (a zombie that init has not reaped yet has finished).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"))
}

/// The pids announced on stderr ("trainer: pid N").
fn announced_pids(output: &str) -> Vec<u32> {
    let mut pids: Vec<u32> =
        output.lines().filter_map(|l| l.split("trainer: pid ").nth(1)).map(|p| p.trim().parse().unwrap()).collect();
    // Each is forwarded as it comes and quoted again in the error.
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[test]
fn a_trainer_that_crashes_hangs_or_writes_nothing_fails_the_run_and_leaves_nothing() {
    let cases = [
        ("mode = \"crash\"", "", "exited with status 3; its last stderr lines:\n    trainer: pid"),
        ("mode = \"hang\"", "timeout = 5", "timed out after 5 s"),
        ("mode = \"no_output\"", "", "exited 0 without writing `model.onnx` (declared in outputs)"),
    ];
    for (params, extra, needle) in cases {
        let p = Project::new();
        write(p.path(), "p.toml", train_pipeline(&format!("scale = 1.0, {params}"), extra));
        let started = Instant::now();
        let out = p.run();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{params}: {all}");
        assert!(started.elapsed() < Duration::from_secs(30), "{params}: took {:?}", started.elapsed());
        assert!(all.contains("stage `fit`: the trainer `python3 trainer.py "), "{params}: {all}");
        assert!(all.contains(needle), "{params}: expected {needle:?} in\n{all}");
        if params.contains("crash") {
            assert!(all.contains("    ValueError: the loss is nan"), "the traceback is quoted: {all}");
        }
        assert!(p.entries().is_empty(), "{params}: a cache entry was left: {:?}", p.entries());
        assert!(p.scratch().is_empty(), "{params}: scratch folders were left: {:?}", p.scratch());
        // The trainer is reaped; what it started (the hanging one's child) is killed with it.
        let trainer = p.trainer_pids()[0];
        assert!(!Path::new(&format!("/proc/{trainer}")).exists(), "{params}: the trainer {trainer} was left behind");
        let pids = announced_pids(&all);
        assert_eq!(pids.len(), if params.contains("hang") { 2 } else { 1 }, "{params}: {all}");
        for pid in pids {
            assert!(!running(pid), "{params}: process {pid} was left running");
        }
        let report = run_json(&p.path().join("out"));
        assert_eq!(report["status"], "failed");
        assert_eq!(report["stages"][1]["cache"], "miss", "run.json names the key of a failed training");
        assert_eq!(report["stages"][1]["key"].as_str().map(str::len), Some(64));
    }
}

/// Starts `pipe run` on a training that sleeps a minute, and returns once the trainer is running.
fn start_training(p: &Project, stderr: std::process::Stdio) -> std::process::Child {
    let child = pipe()
        .args(["run", "p.toml", "--quiet"])
        .current_dir(p.path())
        .env("PIPE_CACHE_DIR", p.cache())
        .env("TRAIN_SLEEP", "60")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.trainings() == 0 {
        assert!(Instant::now() < deadline, "the trainer never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn kill_9_during_training_leaves_no_entry_and_the_next_run_trains() {
    let p = Project::new();
    write(p.path(), "p.toml", full_pipeline("scale = 1.0", "out.parquet"));
    let mut child = start_training(&p, std::process::Stdio::null());
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    // The kernel kills the trainer when pipe dies.
    let pid = p.trainer_pids()[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(Instant::now() < deadline, "the trainer {pid} outlived pipe");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p.entries().is_empty(), "a killed training left an entry: {:?}", p.entries());

    let fit = p.run_ok(&[]);
    assert_eq!(fit["cache"], "miss");
    assert_eq!(p.trainings(), 2, "the next run trains again");
    assert_eq!(p.entries().len(), 1);
    let got = halves(&p.path().join("out/out.parquet"));
    assert_eq!(
        got.iter().map(|(_, h)| *h).collect::<Vec<_>>(),
        ROWS.iter().map(|r| r.2 as f32 * 2.0).collect::<Vec<_>>()
    );
}

/// The pipeline named by a path relative to the current folder (as `pipe run examples/x/p.toml`
/// from the checkout): the trainer and its deps are still found, and the cache key is the same.
#[test]
fn a_pipeline_named_from_another_folder_trains_the_same() {
    let p = Project::new();
    write(p.path(), "p.toml", full_pipeline("scale = 1.0", "out.parquet"));
    let here = p.run_ok(&[]);
    let name = p.path().file_name().unwrap().to_str().unwrap().to_string();
    let out = pipe()
        .args(["run", &format!("{name}/p.toml"), "--quiet"])
        .current_dir(p.path().parent().unwrap())
        .env("PIPE_CACHE_DIR", p.cache())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = run_json(&p.path().join("out"));
    let fit = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "fit").unwrap();
    assert_eq!(fit["cache"], "hit", "{fit}");
    assert_eq!(fit["key"], here["key"]);
}

/// Ctrl-C during training stops the trainer, ends the run as interrupted (exit 130, run.json
/// says so) and leaves no cache entry and no scratch folder.
#[test]
fn ctrl_c_during_training_ends_the_run_as_interrupted() {
    let p = Project::new();
    write(p.path(), "p.toml", full_pipeline("scale = 1.0", "out.parquet"));
    let child = start_training(&p, std::process::Stdio::piped());
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path().join("out/run.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "interrupted", "{report}");
    let pid = p.trainer_pids()[0];
    assert!(!running(pid), "the trainer {pid} outlived the run");
    assert!(p.entries().is_empty(), "an interrupted training left an entry: {:?}", p.entries());
    assert!(p.scratch().is_empty(), "scratch left: {:?}", p.scratch());
}

#[test]
fn validate_checks_the_train_keys_without_training() {
    let p = Project::new();
    write(p.path(), "p.toml", full_pipeline("scale = 1.0", "out.parquet"));
    let out =
        pipe().args(["validate", "p.toml"]).current_dir(p.path()).env("PIPE_CACHE_DIR", p.cache()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(p.trainings(), 0, "validate started the trainer");
    let cases = [
        ("outputs = [\"model.onnx\"]", "outputs = [\"../model.onnx\"]", "is not a plain file name"),
        ("outputs = [\"model.onnx\"]", "outputs = []", "lists no files"),
        ("deps = [\"trainer_lib\"]", "deps = [\"missing_lib\"]", "`missing_lib` does not exist"),
        ("uses = \"train\"", "uses = \"train\"\ntimeout = -1", "must be a positive number of seconds"),
        ("uses = \"train\"", "uses = \"train\"\nepochs = 3", "unknown field `epochs`"),
    ];
    for (from, to, needle) in cases {
        write(p.path(), "p.toml", train_pipeline("scale = 1.0", "").replacen(from, to, 1));
        let out = pipe().args(["validate", "p.toml"]).current_dir(p.path()).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{to}: {t}");
        assert!(t.contains("stage \"fit\"") && t.contains(needle), "{to}: expected {needle:?} in\n{t}");
    }
}

#[test]
fn the_example_trainer_in_training_md_runs_as_documented() {
    let doc = std::fs::read_to_string(repo().join("plugins/TRAINING.md")).unwrap();
    let block = |fence: &str| {
        let start = doc.rfind(fence).expect("a fenced block") + fence.len();
        doc[start..][..doc[start..].find("```").unwrap()].to_string()
    };
    let p = Project::new();
    write(p.path(), "train.py", block("```python\n"));
    let pipeline = format!(
        "[pipeline]\nname = \"doc\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"rows.jsonl\"\n\
         id_column = \"id\"\n\n{}",
        block("```toml\n")
    );
    write(p.path(), "p.toml", pipeline);
    let fit = p.run_ok(&[]);
    assert_eq!((fit["cache"].as_str(), &fit["steps"]), (Some("miss"), &serde_json::json!(3)));
    assert_eq!(fit["metrics"]["loss"].as_array().unwrap().len(), 3);
    let entries = p.entries();
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entries[0].join("model.json")).unwrap()).unwrap();
    let mean = ROWS.iter().map(|r| r.1).sum::<f64>() / ROWS.len() as f64;
    assert!((model["k"].as_f64().unwrap() - mean * 2.0).abs() < 1e-9, "{model}");
    assert_eq!(p.run_ok(&[])["cache"], "hit");
}
