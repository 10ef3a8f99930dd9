//! On a real cluster: tests/cluster/slurm.sh starts a single-node Slurm cluster on this machine
//! (Debian's slurm-wlm and munge), the example's batch script (examples/cluster/pipe-array.sbatch)
//! runs examples/cluster/pipeline.toml over a folder of 400 digits as `sbatch --array=0-3 --wait`,
//! each task with `--shard auto`, then `pipe merge`; the merged result equals the
//! single-process run's. Where Slurm cannot run (not root, no apt), the test says why and passes
//! as skipped, except under CI=true, where that is a failure. The Kubernetes example's pipeline
//! is checked to validate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::dataset::{assert_same_rows, digit_pngs, files, table_rows};
use common::{pipe, repo, run_json, text};

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
    let inputs = digit_pngs(dir.path(), 400);
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
    assert_same_rows(&got, &expected, "4 Slurm tasks");
    let seen = files(&single.join("seen"));
    assert_eq!(seen.len(), 400);
    assert!(files(&sharded.join("seen")) == seen, "the images differ from the single-process run's");
    let (one, all) = (run_json(&single), run_json(&sharded));
    assert_eq!(all["shards"], 4);
    for (a, b) in one["stages"].as_array().unwrap().iter().zip(all["stages"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["rows_in"], &a["rows_out"]), (&b["id"], &b["rows_in"], &b["rows_out"]));
    }
}

/// The manifests of the Kubernetes example, as JSON: every YAML document of each file, parsed by
/// PyYAML (from .pipe/venv, where moto brings it).
fn manifests(name: &str) -> Vec<serde_json::Value> {
    let python = repo().join(".pipe/venv/bin/python3");
    let script = "import sys, json, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(python).arg("-c").arg(script).arg(repo().join("examples/cluster").join(name)).output();
    let out = out.expect(".pipe/venv has Python (scripts/setup --python)");
    assert!(out.status.success(), "{name} does not parse: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first container of a Job's pod template.
fn container(job: &serde_json::Value) -> &serde_json::Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

/// The Kubernetes example keeps its data in object storage: its ConfigMap holds
/// examples/cluster/pipeline-s3.toml as it is, which validates as a shard with the Job's
/// environment; the Jobs mount no shared volume, take credentials from the Secret, and run the
/// commands examples/cluster/README.md gives.
#[test]
fn the_kubernetes_example_parses_and_its_pipeline_validates() {
    let docs = manifests("k8s-indexed-job.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "ConfigMap", "Job"]);
    let pipeline = std::fs::read_to_string(repo().join("examples/cluster/pipeline-s3.toml")).unwrap();
    assert_eq!(docs[0]["data"]["pipeline.toml"].as_str(), Some(pipeline.as_str()), "the ConfigMap's pipeline");
    let run_env = &docs[1]["data"];
    let job = &docs[2];
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(run_env["PIPE_SHARD_COUNT"].as_str().unwrap(), job["spec"]["completions"].to_string());
    let merge_docs = manifests("k8s-merge-job.yaml");
    let readme = std::fs::read_to_string(repo().join("examples/cluster/README.md")).unwrap();
    for (job, command) in [
        (job, "pipe run /config/pipeline.toml --shard auto --quiet"),
        (&merge_docs[0], "pipe merge /config/pipeline.toml --shards 4"),
    ] {
        let got: Vec<&str> =
            container(job)["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(got.join(" "), command);
        assert!(readme.contains(command), "README.md does not give `{command}`");
        let from = &container(job)["envFrom"];
        assert_eq!(from[0]["secretRef"]["name"], "pipe-storage", "{from}");
        assert_eq!(from[1]["configMapRef"]["name"], docs[1]["metadata"]["name"], "{from}");
        let volumes = job["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.iter().all(|v| v.get("persistentVolumeClaim").is_none()), "a shared volume: {volumes:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = common::write(dir.path(), "pipeline.toml", pipeline);
    let mut validate = pipe();
    validate.arg("validate").arg(&file).args(["--shard", "auto"]).env("JOB_COMPLETION_INDEX", "3");
    for (key, value) in run_env.as_object().unwrap() {
        validate.env(key, value.as_str().unwrap());
    }
    for env in container(job)["env"].as_array().unwrap() {
        validate.env(env["name"].as_str().unwrap(), env["value"].as_str().unwrap());
    }
    let out = validate.env("MODEL", repo().join("examples/models/digits-classifier/model.onnx")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
