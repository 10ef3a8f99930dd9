//! refine.score, refine.filter, refine.best-of and refine.iterate on real stages: the span that
//! iterate re-runs is model.diffuse (the hand-computable model of tests/fixtures/diffusion) and
//! refine.score, so every retry draws new noise from the row's stream for that round.

mod common;

use arrow::array::{Array, Float32Array, Int32Array, Int64Array, StringArray};
use common::{pipe_output, read_parquet, repo, run_json, text, write};

fn eps_model() -> String {
    repo().join("tests/fixtures/diffusion/eps.onnx").display().to_string()
}

fn run_ok(dir: &std::path::Path, pipeline: &str) -> arrow::record_batch::RecordBatch {
    write(dir, "p.toml", pipeline);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_parquet(&dir.join("out/out.parquet"))
}

fn strings(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<String> {
    let a = batch.column_by_name(column).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|r| a.value(r).to_string()).collect()
}

fn floats(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<f32> {
    batch.column_by_name(column).unwrap().as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec()
}

fn ints(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<i64> {
    let c = batch.column_by_name(column).unwrap();
    if let Some(a) = c.as_any().downcast_ref::<Int32Array>() {
        return a.values().iter().map(|v| i64::from(*v)).collect();
    }
    c.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
}

/// Labels -> ddpm samples -> score = max value of the sample -> [iterate] -> table.
fn generation(iterate: Option<(&str, u32)>, batch_size: usize) -> String {
    let mut p = format!(
        r#"[pipeline]
name = "iterate"
seed = 5
batch_size = {batch_size}

[[stage]]
id = "labels"
uses = "collect.latent"
count = 4
shape = [1]
labels = [0, 3, 7]

[[stage]]
id = "generate"
uses = "model.diffuse"
model = "{model}"
threads = 1
sample_shape = [1, 4, 4]
scheduler = "ddpm"
steps = 5
condition = "label"

[[stage]]
id = "score"
uses = "refine.score"
column = "sample"
reduce = "max"
"#,
        model = eps_model()
    );
    if let Some((until, rounds)) = iterate {
        p.push_str(&format!(
            "\n[[stage]]\nid = \"retry\"\nuses = \"refine.iterate\"\nstages = [\"generate\", \"score\"]\nuntil = \"{until}\"\nmax_rounds = {rounds}\n"
        ));
    }
    p.push_str("\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"out.parquet\"\n");
    p
}

#[test]
fn iterate_with_one_round_equals_no_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let plain = run_ok(dir.path(), &generation(None, 5));
    let dir = tempfile::tempdir().unwrap();
    let once = run_ok(dir.path(), &generation(Some(("score >= 100", 1)), 5));
    assert_eq!(strings(&plain, "id"), strings(&once, "id"));
    assert_eq!(floats(&plain, "score"), floats(&once, "score"));
    assert!(ints(&once, "attempts").iter().all(|a| *a == 1));
}

#[test]
fn an_unreachable_threshold_stops_after_max_rounds_keeping_the_best() {
    let mut kept: Vec<Vec<f32>> = Vec::new();
    for rounds in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(dir.path(), &generation(Some(("score >= 100", rounds)), 5));
        assert_eq!(out.num_rows(), 12);
        assert!(ints(&out, "attempts").iter().all(|a| *a == rounds as i64), "{rounds} rounds");
        let report = run_json(&dir.path().join("out"));
        let retry = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "retry").unwrap().clone();
        assert_eq!(retry["never_passed"], 12);
        assert_eq!(retry["passed_first_try"], 0);
        assert_eq!(retry["rows_rerun"], 12 * (rounds as u64 - 1));
        kept.push(floats(&out, "score"));
    }
    // Each extra round can only raise a row's kept score (the best of more attempts), and over
    // three extra rounds it does for some rows.
    for w in kept.windows(2) {
        assert!(w[0].iter().zip(&w[1]).all(|(a, b)| b >= a), "{:?} -> {:?}", w[0], w[1]);
    }
    assert!(kept[0].iter().zip(&kept[3]).filter(|(a, b)| b > a).count() >= 3, "{:?} -> {:?}", kept[0], kept[3]);
}

#[test]
fn iterate_retries_only_what_fails_and_does_not_depend_on_the_batch() {
    let mut seen = Vec::new();
    for batch_size in [12, 1, 5] {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(dir.path(), &generation(Some(("score >= 1.5", 6)), batch_size));
        let report = run_json(&dir.path().join("out"));
        let retry = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "retry").unwrap().clone();
        let first = retry["passed_first_try"].as_u64().unwrap();
        let after = retry["passed_after_retries"].as_u64().unwrap();
        let never = retry["never_passed"].as_u64().unwrap();
        assert_eq!(first + after + never, 12);
        let attempts = ints(&out, "attempts");
        let scores = floats(&out, "score");
        assert_eq!(attempts.iter().filter(|a| **a == 1).count() as u64, first);
        for (a, s) in attempts.iter().zip(&scores) {
            if *a < 6 {
                assert!(*s >= 1.5, "a row that stopped early passed");
            }
        }
        seen.push((strings(&out, "id"), scores, attempts));
    }
    assert_eq!(seen[0], seen[1], "batch size 12 vs 1");
    assert_eq!(seen[0], seen[2], "batch size 12 vs 5");
    assert!(seen[0].2.iter().any(|a| *a > 1), "some rows needed a retry");
    assert!(seen[0].2.contains(&1), "some rows passed at once");
}

#[test]
fn score_filter_and_best_of() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"[pipeline]
name = "refine"
seed = 3

[[stage]]
id = "logits"
uses = "collect.latent"
count = 6
shape = [5]
labels = [1, 2]

[[stage]]
id = "class"
uses = "refine.score"
column = "z"
softmax = true
reduce = "class"
class_column = "label"

[[stage]]
id = "top"
uses = "refine.score"
column = "z"
reduce = "argmax"
into = "top"

[[stage]]
id = "entropy"
uses = "refine.score"
column = "z"
softmax = true
reduce = "entropy"
into = "entropy"

[[stage]]
id = "keep"
uses = "refine.filter"
where = "entropy < 1.55"

[[stage]]
id = "best"
uses = "refine.best-of"
group_by = "label"
keep = 2

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#;
    let out = run_ok(dir.path(), pipeline);
    let labels = ints(&out, "label");
    let scores = floats(&out, "score");
    let entropy = floats(&out, "entropy");
    // At most two rows per label, grouped in order of first appearance, best first.
    assert!(labels.len() <= 4 && !labels.is_empty());
    assert!(labels.windows(2).all(|w| w[0] <= w[1]));
    for w in labels.iter().zip(&scores).collect::<Vec<_>>().windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 >= w[1].1);
        }
    }
    assert!(entropy.iter().all(|e| *e < 1.55 && *e > 0.0));
    assert!(scores.iter().all(|s| *s > 0.0 && *s < 1.0));
    let report = run_json(&dir.path().join("out"));
    let stages = report["stages"].as_array().unwrap();
    let filtered: u64 = stages.iter().map(|s| s["filtered"].as_u64().unwrap_or(0)).sum();
    assert_eq!(filtered + out.num_rows() as u64, 12, "every dropped row is counted as filtered");
}

/// A stage in a retried span that drops a row (a SQL `WHERE`) breaks the row-wise promise: the
/// run fails naming the stage and the row, instead of the row going missing.
#[test]
fn a_span_stage_that_drops_a_row_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"[pipeline]
name = "rw"
batch_size = 4

[[stage]]
id = "z"
uses = "collect.latent"
count = 2
shape = [2]
labels = [0, 1, 2]

[[stage]]
id = "sql"
uses = "preprocess.sql"
query = "SELECT id, z, label FROM batch WHERE label > 0"

[[stage]]
id = "again"
uses = "refine.iterate"
stages = ["sql"]
until = "label > 1"
keep = "last"

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#;
    common::write(dir.path(), "p.toml", pipeline);
    let out = common::pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("stage `sql`: re-run by a retry node, it did not pass on row `0-"), "{t}");
    assert!(!dir.path().join("out/out.parquet").exists(), "a failed run commits no output");
}
