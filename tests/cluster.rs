//! On a real cluster: tests/cluster/slurm.sh starts a single-node Slurm cluster on this machine
//! (Debian's slurm-wlm and munge), the example's batch script (examples/cluster/pipe-array.sbatch)
//! runs examples/cluster/pipeline.toml over a folder of 400 digits as `sbatch --array=0-3 --wait`,
//! each task with `--shard auto`, then `pipe merge`; the merged result equals the
//! single-process run's. Where Slurm cannot run (not root, no apt), the test says why and passes
//! as skipped, except under CI=true, where that is a failure. The Kubernetes example's pipeline
//! is checked to validate.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::record_batch::RecordBatch;
use common::{pipe, read_parquet, repo, run_json, text};

/// The cluster started by tests/cluster/slurm.sh in a folder, stopped (by its pid files) when
/// dropped.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
}

impl Slurm {
    /// Starts the cluster, or says why it cannot run here.
    fn start(dir: &Path) -> Result<Slurm, String> {
        let script = repo().join("tests/cluster/slurm.sh");
        let out = Command::new(&script).arg("start").arg(dir).output().map_err(|e| format!("{script:?}: {e}"))?;
        match out.status.code() {
            Some(0) => Ok(Slurm { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") }),
            Some(3) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            _ => panic!("tests/cluster/slurm.sh start failed: {}", text(&out)),
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/cluster/slurm.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// A folder of 400 handwritten digits: the example's 360-odd PNGs under new names, then again.
fn inputs(dir: &Path) -> PathBuf {
    let folder = dir.join("inputs");
    std::fs::create_dir_all(&folder).unwrap();
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/digits/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    for i in 0..400 {
        std::fs::copy(&pngs[i % pngs.len()], folder.join(format!("digit-{i:04}.png"))).unwrap();
    }
    folder
}

/// The table's rows, from a file or every part of a dataset folder, sorted by id.
fn table_rows(path: &Path) -> RecordBatch {
    let mut files: Vec<PathBuf> = match path.is_dir() {
        true => std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect(),
        false => vec![path.to_path_buf()],
    };
    files.sort();
    let batches: Vec<RecordBatch> = files.iter().map(|f| read_parquet(f)).collect();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let order = arrow::compute::sort_to_indices(all.column_by_name("id").unwrap(), None, None).unwrap();
    let columns = all.columns().iter().map(|c| arrow::compute::take(c, &order, None).unwrap()).collect();
    RecordBatch::try_new(all.schema(), columns).unwrap()
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
    }
    out
}

#[test]
fn a_slurm_job_array_gives_the_single_process_result() {
    let dir = tempfile::tempdir().unwrap();
    let slurm = match Slurm::start(&dir.path().join("slurm")) {
        Ok(slurm) => slurm,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI must run the Slurm test: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let inputs = inputs(dir.path());
    let pipeline = repo().join("examples/cluster/pipeline.toml");
    let cache = dir.path().join("cache");
    let single = dir.path().join("single");
    let out = pipe()
        .arg("run")
        .arg(&pipeline)
        .arg("--output-dir")
        .arg(&single)
        .arg("--quiet")
        .env("INPUT_DIR", &inputs)
        .env("PIPE_CACHE_DIR", dir.path().join("cache-single"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The tasks run `pipe` from the environment sbatch exports, as a user's job would.
    let sharded = dir.path().join("sharded");
    let mut sbatch = Command::new("sbatch");
    for (k, v) in pipe().get_envs() {
        match v {
            Some(v) => sbatch.env(k, v),
            None => sbatch.env_remove(k),
        };
    }
    let job = sbatch
        .args(["--array=0-3", "--wait", "--quiet"])
        .arg(format!("--output={}/task-%a.log", dir.path().display()))
        .arg(format!("--chdir={}", repo().join("examples/cluster").display()))
        .arg(repo().join("examples/cluster/pipe-array.sbatch"))
        .env("SLURM_CONF", &slurm.conf)
        .env("PIPE", env!("CARGO_BIN_EXE_pipe"))
        .env("PIPE_OUTPUT_DIR", &sharded)
        .env("INPUT_DIR", &inputs)
        .env("PIPE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let logs: String =
        (0..4).map(|i| std::fs::read_to_string(dir.path().join(format!("task-{i}.log"))).unwrap_or_default()).collect();
    assert!(job.status.success(), "sbatch: {}\ntask logs:\n{logs}", text(&job));

    let merged = pipe().arg("merge").arg(&pipeline).arg("--output-dir").arg(&sharded).output().unwrap();
    assert!(merged.status.success(), "{}", text(&merged));
    assert!(text(&merged).contains("merged 4 shards"), "{}", text(&merged));
    let parts: Vec<String> = std::fs::read_dir(sharded.join("predictions.parquet"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert!((0..4).all(|i| parts.contains(&format!("part-{i:05}-of-00004.parquet"))), "{parts:?}");

    let expected = table_rows(&single.join("predictions.parquet"));
    let got = table_rows(&sharded.join("predictions.parquet"));
    assert_eq!(expected.num_rows(), 400);
    assert_eq!(got.schema().fields(), expected.schema().fields());
    for (k, field) in expected.schema().fields().iter().enumerate() {
        assert_eq!(got.column(k), expected.column(k), "column {}", field.name());
    }
    let seen = files(&single.join("seen"));
    assert_eq!(seen.len(), 400);
    assert!(files(&sharded.join("seen")) == seen, "the images differ from the single-process run's");
    let (one, all) = (run_json(&single), run_json(&sharded));
    assert_eq!(all["shards"], 4);
    for (a, b) in one["stages"].as_array().unwrap().iter().zip(all["stages"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["rows_in"], &a["rows_out"]), (&b["id"], &b["rows_in"], &b["rows_out"]));
    }
}

/// The pipeline in the Kubernetes example's ConfigMap validates, with the paths its Job sets.
#[test]
fn the_kubernetes_example_pipeline_validates() {
    let manifest = std::fs::read_to_string(repo().join("examples/cluster/k8s-indexed-job.yaml")).unwrap();
    let start = manifest.find("  pipeline.toml: |\n").expect("the ConfigMap holds pipeline.toml");
    let body: String = manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = common::write(dir.path(), "pipeline.toml", body);
    let out = pipe()
        .arg("validate")
        .arg(&file)
        .args(["--shard", "auto"])
        .env("JOB_COMPLETION_INDEX", "3")
        .env("PIPE_SHARD_COUNT", "4")
        .env("INPUT_DIR", repo().join("examples/digits/data"))
        .env("MODEL", repo().join("examples/models/digits-classifier/model.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
