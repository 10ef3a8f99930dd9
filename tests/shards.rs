//! Sharded runs: a diffusion pipeline run as N = 1, 2, 4 and 7 shards (the shards of one N as
//! parallel processes into one folder), then `pipe merge`, gives the unsharded run's rows and
//! values and byte-identical images; every id lands in exactly one shard; a shard run again gives
//! the same parts, and one killed inside a commit resumes its own journal; bad `--shard` values,
//! a missing or failed shard and a stage that needs every row are clear errors.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use arrow::record_batch::RecordBatch;
use common::dataset::{files, parts, table_rows};
use common::{pipe, read_parquet, run_json, text, write};

/// collect.latent -> model.diffuse -> model.onnx -> refine.score -> sink.table + sink.images,
/// 40 rows in batches of 3.
fn pipeline() -> String {
    common::digits_diffusion(
        "shards",
        11,
        4,
        8,
        r#"
[[stage]]
id = "score"
uses = "refine.score"
column = "probs"
reduce = "class"
class_column = "label"

[[stage]]
id = "table"
uses = "sink.table"
path = "samples.parquet"
columns = ["id", "label", "score", "sample"]

[[stage]]
id = "images"
uses = "sink.images"
column = "sample"
range = "-1,1"
"#,
    )
}

const ROWS: usize = 40;

/// `pipe run FILE --output-dir OUT ARGS`, with a cache of its own so that every run computes its
/// rows instead of reading another run's.
fn run(file: &Path, out: &Path, cache: &Path, args: &[&str]) -> std::process::Command {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--output-dir").arg(out).arg("--quiet").args(args).env("PIPE_CACHE_DIR", cache);
    c
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}

fn ids(batch: &RecordBatch) -> Vec<String> {
    let col = batch.column_by_name("id").unwrap();
    let ids = col.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    ids.iter().map(|i| i.unwrap().to_string()).collect()
}

/// Per stage id: (rows in, rows out, rejected).
fn stage_rows(report: &serde_json::Value) -> Vec<(String, u64, u64, u64)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap();
            (s["id"].as_str().unwrap().to_string(), n("rows_in"), n("rows_out"), n("rejected"))
        })
        .collect()
}

#[test]
fn any_number_of_shards_merges_to_the_unsharded_result() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", pipeline());
    let single = dir.path().join("single");
    ok(run(&file, &single, &dir.path().join("cache-single"), &[]).output().unwrap());
    let expected = table_rows(&single.join("samples.parquet"));
    assert_eq!(expected.num_rows(), ROWS);
    let images = files(&single.join("images"));
    assert_eq!(images.len(), ROWS);
    let expected_figures = stage_rows(&run_json(&single));

    for n in [1u32, 2, 4, 7] {
        let out = dir.path().join(format!("n{n}"));
        let cache = dir.path().join(format!("cache-{n}"));
        // The shards of one N at once, into one folder, as the tasks of a job array run.
        let children: Vec<_> =
            (0..n).map(|i| run(&file, &out, &cache, &["--shard", &format!("{i}/{n}")]).spawn().unwrap()).collect();
        for child in children {
            ok(child.wait_with_output().unwrap());
        }
        let merged = ok(pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap());
        assert!(text(&merged).contains(&format!("merged {n} shards")), "{}", text(&merged));

        let table = out.join("samples.parquet");
        let part_files = parts(&table);
        assert_eq!(part_files.len(), n as usize, "N = {n}: {part_files:?}");
        let mut seen = BTreeSet::new();
        for (i, part) in part_files.iter().enumerate() {
            let name = format!("part-{i:05}-of-{n:05}.parquet");
            assert_eq!(part.file_name().unwrap().to_string_lossy(), name);
            for id in ids(&read_parquet(part)) {
                assert_eq!(pipeline::Shard::of(&id, n), i as u32, "N = {n}: row {id} is in part {i}");
                assert!(seen.insert(id.clone()), "N = {n}: row {id} is in two parts");
            }
        }
        assert_eq!(seen.len(), ROWS, "N = {n}: every row in some shard");

        let got = table_rows(&table);
        assert_eq!(got.schema().fields(), expected.schema().fields(), "N = {n}");
        for (k, field) in expected.schema().fields().iter().enumerate() {
            assert_eq!(got.column(k), expected.column(k), "N = {n}: column {}", field.name());
        }
        assert!(files(&out.join("images")) == images, "N = {n}: the images differ from the unsharded run's");

        let report = run_json(&out);
        assert_eq!(report["status"], "ok");
        assert_eq!(report["shards"], n);
        assert_eq!(stage_rows(&report), expected_figures, "N = {n}: merged figures");
        let shard_reports = (0..n).filter(|i| out.join(format!("run-{i:05}-of-{n:05}.json")).is_file()).count();
        assert_eq!(shard_reports, n as usize);
        let left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "N = {n}: left in the output folder: {left:?}");

        if n == 4 {
            // A retried array task: shard 2 again gives the same part and images.
            let before = std::fs::read(table.join("part-00002-of-00004.parquet")).unwrap();
            ok(run(&file, &out, &dir.path().join("cache-retry"), &["--shard", "2/4"]).output().unwrap());
            assert!(std::fs::read(table.join("part-00002-of-00004.parquet")).unwrap() == before, "shard 2 rerun");
            assert!(files(&out.join("images")) == images, "the images after shard 2 ran again");
        }
    }
}

#[test]
fn bad_shards_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", pipeline());
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    for (shard, says) in [
        ("4/4", "shard 4 does not exist in 4 shards"),
        ("0/0", "the shard count must be at least 1"),
        ("2", "give I/N"),
        ("auto", "no shard in the environment"),
    ] {
        let r = run(&file, &out, &cache, &["--shard", shard])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(2), "--shard {shard}: {}", text(&r));
        assert!(text(&r).contains(says), "--shard {shard}: {}", text(&r));
    }
    let k8s = run(&file, &out, &cache, &["--shard", "auto"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env("JOB_COMPLETION_INDEX", "1")
        .env_remove("PIPE_SHARD_COUNT")
        .output()
        .unwrap();
    assert_eq!(k8s.status.code(), Some(2), "{}", text(&k8s));
    assert!(text(&k8s).contains("--shard auto/N"), "{}", text(&k8s));
    assert!(!out.exists(), "a refused run wrote nothing");

    // A stage that needs every row is a diagnostic at its stage, saying what to do.
    let best = format!(
        "{}\n[[stage]]\nid = \"best\"\nuses = \"refine.best-of\"\ninput = \"score\"\ngroup_by = \"label\"\n",
        pipeline()
    );
    let best_file = write(dir.path(), "best.toml", best);
    let r = run(&best_file, &out, &cache, &["--shard", "1/3"]).output().unwrap();
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    let said = text(&r);
    assert!(said.contains("stage \"best\": refine.best-of needs every row, and this run is shard 1/3"), "{said}");
    assert!(said.contains("best.toml:"), "located in the file: {said}");
    assert!(said.contains("unsharded run"), "{said}");
    let v = pipe().arg("validate").arg(&best_file).args(["--shard", "0/2"]).output().unwrap();
    assert_eq!(v.status.code(), Some(2), "{}", text(&v));
}

#[test]
fn merge_names_the_shards_that_did_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", pipeline().replace("count = 4", "count = 1"));
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let none = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap();
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    ok(run(&file, &out, &cache, &["--shard", "0/3"]).output().unwrap());
    ok(run(&file, &out, &cache, &["--shard", "2/3"]).output().unwrap());
    let r = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    let said = text(&r);
    assert!(said.contains("cannot merge 1 of 3 shards"), "{said}");
    assert!(said.contains("shard 1/3: no run-00001-of-00003.json"), "{said}");
    assert!(!out.join("run.json").exists(), "no run.json from a partial merge");

    // A shard that failed is named with its error (its report as a failed run writes it).
    let why = "stage `generate`: model.onnx: no such file";
    let failed = serde_json::json!({
        "pipeline": "shards", "status": "failed", "error": why, "seconds": 0.1, "seed": 11,
        "output_dir": out, "rejected": 0, "shard": 1, "shards": 3, "stages": [],
    });
    std::fs::write(out.join("run-00001-of-00003.json"), failed.to_string()).unwrap();
    let r = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains(&format!("shard 1/3 failed (run-00001-of-00003.json: {why})")), "{}", text(&r));

    ok(run(&file, &out, &cache, &["--shard", "1/3"]).output().unwrap());
    ok(pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap());
    assert_eq!(run_json(&out)["stages"][0]["rows_out"], 10);

    // A shard of a run with another count in the same folder would add its rows to the dataset.
    ok(run(&file, &out, &cache, &["--shard", "0/2"]).output().unwrap());
    let r = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).args(["--shards", "3"]).output().unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("part-00000-of-00002.parquet"), "{}", text(&r));
    let r = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap();
    assert!(text(&r).contains("reports of runs of 2, 3 shards: give --shards N"), "{}", text(&r));
}

#[test]
fn a_shard_killed_in_a_commit_resumes_its_own_journal() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", pipeline());
    let single = dir.path().join("single");
    ok(run(&file, &single, &dir.path().join("cache-single"), &[]).output().unwrap());
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    ok(run(&file, &out, &cache, &["--shard", "0/2"]).output().unwrap());
    let part0 = std::fs::read(out.join("samples.parquet/part-00000-of-00002.parquet")).unwrap();

    // Shard 1 killed inside a sink's commit (its data durable, its log line not yet written).
    let pause = dir.path().join("paused");
    let mut child = run(&file, &out, &cache, &["--shard", "1/2"])
        .env("PIPE_COMMIT_INTERVAL", "0")
        .env("PIPE_TEST_PAUSE", "commit:5")
        .env("PIPE_TEST_PAUSE_FILE", &pause)
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pause.exists() {
        assert!(child.try_wait().unwrap().is_none(), "shard 1 ended before its pause point");
        assert!(std::time::Instant::now() < deadline, "shard 1 never reached its pause point");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    assert!(out.join(".pipe-journal-00001-of-00002").is_dir(), "shard 1 keeps its own journal");
    assert!(!out.join(".pipe-journal").exists() && !out.join(".pipe-journal-00000-of-00002").exists());

    let early = pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap();
    assert_eq!(early.status.code(), Some(1), "{}", text(&early));
    assert!(text(&early).contains("shard 1/2: no run-00001-of-00002.json"), "{}", text(&early));

    ok(run(&file, &out, &cache, &["--shard", "1/2"]).output().unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run-00001-of-00002.json")).unwrap()).unwrap();
    assert_eq!(report["resumed"], true, "{report}");
    assert!(report["stages"][0]["resumed"].as_u64().unwrap() > 0, "{report}");
    assert!(std::fs::read(out.join("samples.parquet/part-00000-of-00002.parquet")).unwrap() == part0);
    ok(pipe().arg("merge").arg(&file).arg("--output-dir").arg(&out).output().unwrap());
    let (expected, got) = (table_rows(&single.join("samples.parquet")), table_rows(&out.join("samples.parquet")));
    for (k, field) in expected.schema().fields().iter().enumerate() {
        assert_eq!(got.column(k), expected.column(k), "column {}", field.name());
    }
    assert!(files(&out.join("images")) == files(&single.join("images")), "the images after the resume");
    assert_eq!(run_json(&out)["resumed"], true);
}

/// A shard's report, `run-IIIII-of-NNNNN.json` in `out`.
fn shard_report(out: &Path, index: u32, count: u32) -> serde_json::Value {
    let path = out.join(format!("run-{index:05}-of-{count:05}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The per-row cache figures of stage `id` in a report: (hits, misses).
fn cache_figures(report: &serde_json::Value, id: &str) -> (u64, u64) {
    let stage = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
    (stage["cache"]["hits"].as_u64().unwrap_or(0), stage["cache"]["misses"].as_u64().unwrap_or(0))
}

/// The per-row cache under --shard: a shard answered from the cache (filled by the same shard, or
/// by an unsharded run) writes the part and images that it writes with --no-cache.
#[test]
fn a_shard_answered_from_the_cache_writes_what_it_computes_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.toml", pipeline());
    let part = "samples.parquet/part-00001-of-00003.parquet";
    let none = dir.path().join("none");
    ok(run(&file, &none, &dir.path().join("cache-none"), &["--shard", "1/3", "--no-cache"]).output().unwrap());
    let rows = shard_report(&none, 1, 3)["stages"][0]["rows_out"].as_u64().unwrap();
    assert!(rows > 0 && rows < ROWS as u64, "shard 1/3 has {rows} rows");
    let expected = std::fs::read(none.join(part)).unwrap();
    let images = files(&none.join("images"));
    assert_eq!(images.len() as u64, rows);

    // The same shard twice with one cache: the second run computes no row of the model stages.
    let cache = dir.path().join("cache");
    let (cold, warm) = (dir.path().join("cold"), dir.path().join("warm"));
    ok(run(&file, &cold, &cache, &["--shard", "1/3"]).output().unwrap());
    ok(run(&file, &warm, &cache, &["--shard", "1/3"]).output().unwrap());
    assert_eq!(cache_figures(&shard_report(&cold, 1, 3), "generate"), (0, rows));
    assert_eq!(cache_figures(&shard_report(&warm, 1, 3), "generate"), (rows, 0));
    for out in [&cold, &warm] {
        assert!(std::fs::read(out.join(part)).unwrap() == expected, "{}: the part differs", out.display());
        assert!(files(&out.join("images")) == images, "{}: the images differ", out.display());
    }

    // A cache filled by an unsharded run answers the shard's rows: the key is the row's, not the
    // shard's.
    let shared = dir.path().join("cache-unsharded");
    ok(run(&file, &dir.path().join("single"), &shared, &[]).output().unwrap());
    let from_single = dir.path().join("from-single");
    ok(run(&file, &from_single, &shared, &["--shard", "1/3"]).output().unwrap());
    assert_eq!(cache_figures(&shard_report(&from_single, 1, 3), "generate"), (rows, 0));
    assert!(std::fs::read(from_single.join(part)).unwrap() == expected, "the part from the unsharded cache");
    assert!(files(&from_single.join("images")) == images, "the images from the unsharded cache");
}
