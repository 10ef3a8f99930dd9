//! Shards that share no folder, as the pods of a Kubernetes Indexed Job: examples/cluster's
//! pipeline-s3.toml (the one in its ConfigMap) reads 90 digit PNGs from moto's S3 server, and 3
//! shards, each a process with its own local output folder and cache, write their table parts and
//! images to `s3://` and upload their run reports and rejects (`[pipeline] run_reports`);
//! `pipe merge`, from a folder of its own, reads the reports from the store and uploads run.json.
//! The objects equal the single-process local run of examples/cluster/pipeline.toml (rows sorted
//! by id, image bytes), a retried shard (a new pod: a fresh folder) uploads the same objects, and
//! a missing shard report or parts of another shard count are refused. The Kubernetes manifests
//! parse, and their pipeline and commands are what examples/cluster/README.md says. Without moto
//! the S3 test is skipped with the reason, except under CI=true, where that is a failure.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::dataset::{assert_same_rows, digit_pngs, files, table_rows};
use common::s3::S3;
use common::{pipe, repo, run_json, text};

const ROWS: usize = 90;

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// `pipe ARGS examples/cluster/pipeline-s3.toml ...` against the server, run in `scratch` (the
/// output folder) with its own cache, the outputs under `s3://data/runs/RUN`.
fn cloud(s3: &S3, args: &[&str], scratch: &Path, run: &str) -> Command {
    let mut c = pipe();
    s3.env(&mut c);
    c.arg(args[0])
        .arg(repo().join("examples/cluster/pipeline-s3.toml"))
        .args(&args[1..])
        .env("INPUT_URL", "s3://data/inputs/")
        .env("OUTPUT_URL", format!("s3://data/runs/{run}"))
        .env("PIPE_SCRATCH", scratch)
        .env("PIPE_CACHE_DIR", scratch.with_extension("cache"))
        .env_remove("MODEL");
    c
}

/// Runs shards `which` of 3 of the run `run` at once, each in its own folder under `dir`.
fn shards(s3: &S3, dir: &Path, run: &str, which: &[u32]) {
    let children: Vec<_> = which
        .iter()
        .map(|i| {
            let scratch = dir.join(format!("{run}-shard-{i}"));
            cloud(s3, &["run", "--shard", &format!("{i}/3"), "--quiet"], &scratch, run).spawn().unwrap()
        })
        .collect();
    for child in children {
        ok(child.wait_with_output().unwrap());
    }
}

#[test]
fn shards_on_separate_machines_write_to_s3_and_merge_to_the_single_process_result() {
    let Some(s3) = S3::start_or_skip("the sharded object storage test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let inputs = digit_pngs(dir.path(), ROWS);
    s3.create_bucket("data");
    s3.put_dir(&inputs, "data", "inputs/");

    let single = dir.path().join("single");
    ok(pipe()
        .arg("run")
        .arg(repo().join("examples/cluster/pipeline.toml"))
        .arg("--output-dir")
        .arg(&single)
        .arg("--quiet")
        .env("INPUT_DIR", &inputs)
        .env("PIPE_CACHE_DIR", dir.path().join("single.cache"))
        .env_remove("MODEL")
        .output()
        .unwrap());

    shards(&s3, dir.path(), "r1", &[0, 1, 2]);
    let merged = ok(cloud(&s3, &["merge"], &dir.path().join("merge"), "r1").output().unwrap());
    assert!(text(&merged).contains("merged 3 shards"), "{}", text(&merged));
    assert!(text(&merged).contains("s3://data/runs/r1/run.json"), "{}", text(&merged));

    let keys = s3.list("data", "runs/r1/");
    let top: Vec<&str> = keys.iter().map(|k| &k["runs/r1/".len()..]).filter(|k| !k.contains('/')).collect();
    let mut want = vec!["run.json".to_string()];
    for i in 0..3 {
        want.push(format!("rejects-{i:05}-of-00003.jsonl"));
        want.push(format!("run-{i:05}-of-00003.json"));
    }
    want.sort();
    assert_eq!(top, want, "{keys:?}");
    let parts: Vec<&String> = keys.iter().filter(|k| k.starts_with("runs/r1/predictions.parquet/")).collect();
    let want_parts: Vec<String> =
        (0..3).map(|i| format!("runs/r1/predictions.parquet/part-{i:05}-of-00003.parquet")).collect();
    assert_eq!(parts, want_parts.iter().collect::<Vec<_>>());

    let got = dir.path().join("got");
    s3.download("data", "runs/r1/", &got);
    let expected = table_rows(&single.join("predictions.parquet"));
    assert_eq!(expected.num_rows(), ROWS);
    assert_same_rows(&table_rows(&got.join("predictions.parquet")), &expected, "3 shards in s3");
    let images = files(&single.join("seen"));
    assert_eq!(images.len(), ROWS);
    assert!(files(&got.join("seen")) == images, "the images in s3 differ from the single-process run's");
    let (one, all) = (run_json(&single), run_json(&got));
    assert_eq!(
        (&all["status"], &all["shards"], &all["output_dir"]),
        (&"ok".into(), &3.into(), &"s3://data/runs/r1".into())
    );
    for (a, b) in one["stages"].as_array().unwrap().iter().zip(all["stages"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["rows_in"], &a["rows_out"]), (&b["id"], &b["rows_in"], &b["rows_out"]));
    }
    assert!(dir.path().join("merge/run.json").is_file(), "the merge keeps a local copy");

    // A retried pod starts from an empty folder and uploads the same objects.
    let part = "runs/r1/predictions.parquet/part-00001-of-00003.parquet";
    let (before, report_before) = (s3.get("data", part), s3.get("data", "runs/r1/run-00001-of-00003.json"));
    ok(cloud(&s3, &["run", "--shard", "1/3", "--quiet"], &dir.path().join("retry"), "r1").output().unwrap());
    assert!(s3.get("data", part) == before, "the retried shard's part differs");
    assert_eq!(s3.list("data", "runs/r1/"), keys, "the retried shard uploaded other objects");
    let report: serde_json::Value = serde_json::from_slice(&s3.get("data", "runs/r1/run-00001-of-00003.json")).unwrap();
    let first: serde_json::Value = serde_json::from_slice(&report_before).unwrap();
    assert_eq!(report["stages"][0]["rows_out"], first["stages"][0]["rows_out"]);
    ok(cloud(&s3, &["merge"], &dir.path().join("merge-again"), "r1").output().unwrap());
    let downloaded = dir.path().join("again");
    s3.download("data", "runs/r1/seen/", &downloaded);
    assert!(files(&downloaded) == images, "the images after the retry");

    // A shard that has not uploaded its report is named, and nothing is merged.
    shards(&s3, dir.path(), "r2", &[0, 2]);
    let r = cloud(&s3, &["merge"], &dir.path().join("merge-r2"), "r2").output().unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("shard 1/3: no run-00001-of-00003.json"), "{}", text(&r));
    assert!(!s3.list("data", "runs/r2/").contains(&"runs/r2/run.json".to_string()));

    // Parts of a run of another shard count under the prefix would join the dataset.
    shards(&s3, dir.path(), "r2", &[1]);
    let stray = dir.path().join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(
        got.join("predictions.parquet/part-00000-of-00003.parquet"),
        stray.join("part-00000-of-00002.parquet"),
    )
    .unwrap();
    s3.put_dir(&stray, "data", "runs/r2/predictions.parquet/");
    let r = cloud(&s3, &["merge"], &dir.path().join("merge-r2b"), "r2").output().unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("s3://data/runs/r2/predictions.parquet/part-00000-of-00002.parquet"), "{}", text(&r));
    s3.delete("data", "runs/r2/predictions.parquet/part-00000-of-00002.parquet");
    ok(cloud(&s3, &["merge"], &dir.path().join("merge-r2c"), "r2").output().unwrap());
}

#[test]
fn run_reports_must_be_an_object_storage_url() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["out/reports", "https://example.com/runs/"] {
        let out = pipe()
            .arg("validate")
            .arg(repo().join("examples/cluster/pipeline-s3.toml"))
            .args(["--set", &format!("pipeline.run_reports=\"{value}\"")])
            .env("INPUT_URL", "s3://data/inputs/")
            .env("OUTPUT_URL", "s3://data/runs/x")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{value}: {}", text(&out));
        assert!(text(&out).contains("is not an object storage URL pipe can write"), "{value}: {}", text(&out));
    }
}
