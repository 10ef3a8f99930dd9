//! Partitioned datasets: sink.table `partition_by` writes Hive-style folders that pyarrow.dataset,
//! polars and duckdb read with hive partitioning (the partition columns restored), and
//! collect.table reads a folder of parts, pyarrow's own partitioned datasets included.

mod common;

use std::path::{Path, PathBuf};

use arrow::array::{Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use common::{pipe_output, read_parquet, repo, text, write};

/// The Python interpreter of .pipe/venv (made by `scripts/setup --python`, which scripts/test runs,
/// with pyarrow, polars and duckdb).
fn venv_python() -> PathBuf {
    let python = repo().join(".pipe/venv/bin/python3");
    assert!(python.is_file(), "no {}: run scripts/setup --no-build --python", python.display());
    python
}

/// Runs a Python script in `dir`; its stdout.
fn python(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new(venv_python()).args(["-c", script]).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script}\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The kinds of the rows: text that must be escaped in a folder name, and an empty one.
const KINDS: [&str; 5] = ["plain", "a/b", "x=y", "50%", ""];

/// Row `i` of the input: (name, label, kind, score); every seventh label is missing (null).
fn row(i: usize) -> (String, Option<i64>, &'static str, i64) {
    let label = (i % 7 != 6).then_some((i % 3) as i64);
    (format!("r{i:02}"), label, KINDS[i % KINDS.len()], 10 * i as i64)
}

const ROWS: usize = 40;

/// Writes `in/rows.csv` and a pipeline that writes it to `out/samples.parquet` partitioned by
/// label and kind.
fn write_partitioned(dir: &Path, rows: usize) {
    let mut csv = "name,label,kind,score\n".to_string();
    for i in 0..rows {
        let (name, label, kind, score) = row(i);
        let label = label.map(|l| l.to_string()).unwrap_or_default();
        csv.push_str(&format!("{name},{label},\"{kind}\",{score}\n"));
    }
    write(dir, "in/rows.csv", csv);
    write(
        dir,
        "w.toml",
        "[pipeline]\nname = \"w\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"in/rows.csv\"\n\
         id_column = \"name\"\ncolumns = [\"label\", \"kind\", \"score\"]\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
         path = \"samples.parquet\"\n\
         partition_by = [\"label\", \"kind\"]\n",
    );
    let out = pipe_output(&["run", "w.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// What every reader must see: one JSON line a row, `[id, label, kind, score]`, sorted by id;
/// an empty kind is Hive's default partition, read back as null.
fn expected(rows: usize) -> Vec<String> {
    (0..rows)
        .map(|i| {
            let (name, label, kind, score) = row(i);
            let label = label.map_or("null".to_string(), |l| l.to_string());
            let kind = if kind.is_empty() { "null".to_string() } else { format!("{kind:?}") };
            format!("[\"{name}\", {label}, {kind}, {score}]")
        })
        .collect()
}

#[test]
fn a_partitioned_table_is_read_back_by_pyarrow_polars_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    write_partitioned(dir.path(), ROWS);
    let root = dir.path().join("out/samples.parquet");
    for folder in ["label=1/kind=a%2Fb", "label=2/kind=x%3Dy", "label=0/kind=50%25", "label=0/kind=plain"] {
        assert!(root.join(folder).join("part-00000.parquet").is_file(), "no {folder}/part-00000.parquet");
    }
    assert!(root.join("label=__HIVE_DEFAULT_PARTITION__").is_dir());
    assert!(root.join("label=1/kind=__HIVE_DEFAULT_PARTITION__/part-00000.parquet").is_file());
    // Inside the files: the other columns only, rows in their input order.
    let part = read_parquet(&root.join("label=0/kind=plain/part-00000.parquet"));
    let names: Vec<String> = part.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["id", "score"]);
    let ids = part.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["r00", "r15", "r30"]);

    let script = r#"
import json, sys
import pyarrow.dataset as ds, polars as pl, duckdb

def show(name, rows):
    for r in sorted(rows, key=lambda r: r[0]):
        print(name, json.dumps(list(r)))

t = ds.dataset("out/samples.parquet", format="parquet", partitioning="hive").to_table()
show("pyarrow", zip(*(t[c].to_pylist() for c in ["id", "label", "kind", "score"])))
print("pyarrow-type", t.schema.field("label").type)
df = pl.scan_parquet("out/samples.parquet/**/*.parquet", hive_partitioning=True).collect()
show("polars", df.select(["id", "label", "kind", "score"]).iter_rows())
got = duckdb.sql("SELECT id, label, kind, score FROM read_parquet('out/samples.parquet/**/*.parquet', hive_partitioning = true)").fetchall()
show("duckdb", got)
"#;
    let out = python(dir.path(), script);
    let want = expected(ROWS);
    for reader in ["pyarrow", "polars", "duckdb"] {
        let got: Vec<&str> =
            out.lines().filter_map(|l| l.strip_prefix(reader).and_then(|l| l.strip_prefix(' '))).collect();
        assert_eq!(got, want, "{reader} reads other rows:\n{out}");
    }
    assert!(out.contains("pyarrow-type int32"), "{out}");
}

#[test]
fn a_rerun_with_fewer_partitions_leaves_none_of_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    write_partitioned(dir.path(), ROWS);
    let root = dir.path().join("out/samples.parquet");
    assert!(root.join("label=2/kind=plain").is_dir());
    std::fs::write(root.join("notes.txt"), "kept").unwrap();
    // Rows 0-4 have labels 0, 1, 2, 0, 1 and each kind once: label=2 keeps kind=x%3Dy only.
    write_partitioned(dir.path(), 5);
    assert!(!root.join("label=2/kind=plain").exists(), "a stale partition is left");
    assert!(!root.join("label=__HIVE_DEFAULT_PARTITION__").exists(), "a stale folder is left");
    assert!(root.join("label=2/kind=x%3Dy/part-00000.parquet").is_file());
    assert_eq!(std::fs::read_to_string(root.join("notes.txt")).unwrap(), "kept", "other files stay");
    let out = python(
        dir.path(),
        "import pyarrow.dataset as ds\nprint(ds.dataset('out/samples.parquet/label=0', format='parquet').count_rows())",
    );
    assert_eq!(out.trim(), "2");
}

#[test]
fn a_partition_column_that_is_missing_or_a_tensor_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    for (column, says) in [("lable", "the input has no column `lable`"), ("sample", "cannot be a partition value")] {
        let pipeline = format!(
            "[pipeline]\nname = \"t\"\n\n[[stage]]\nid = \"z\"\nuses = \"collect.latent\"\ncount = 3\nshape = [2]\n\
             into = \"sample\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"rows.parquet\"\n\
             partition_by = [\"{column}\"]\n"
        );
        write(dir.path(), "p.toml", &pipeline);
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(all.contains(says) && all.contains("partition_by"), "{all}");
    }
}

/// A dataset as pyarrow writes it (`write_dataset` with hive partitioning), read by collect.table
/// as a folder and as a glob: the partition column comes back, Int32 as pyarrow infers it, and the
/// files are read in sorted path order.
#[test]
fn collect_table_reads_a_dataset_that_pyarrow_wrote() {
    let dir = tempfile::tempdir().unwrap();
    python(
        dir.path(),
        r#"
import pyarrow as pa, pyarrow.dataset as ds
t = pa.table({"name": [f"n{i}" for i in range(30)], "label": [i % 3 for i in range(30)], "score": list(range(30))})
ds.write_dataset(t, "ds", format="parquet", partitioning=["label"], partitioning_flavor="hive")
"#,
    );
    assert!(dir.path().join("ds/label=2").is_dir());
    for (path, out) in [("ds", "folder"), ("ds/*/*.parquet", "glob")] {
        let pipeline = format!(
            "[pipeline]\nname = \"r\"\noutput_dir = \"{out}\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
             path = \"{path}\"\nid_column = \"name\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
             path = \"back.parquet\"\n"
        );
        write(dir.path(), "r.toml", &pipeline);
        let checked = pipe_output(&["validate", "r.toml"], dir.path());
        assert!(text(&checked).contains("label: Int32"), "{path}: {}", text(&checked));
        let run = pipe_output(&["run", "r.toml", "--quiet"], dir.path());
        assert_eq!(run.status.code(), Some(0), "{path}: {}", text(&run));
        let back = read_parquet(&dir.path().join(out).join("back.parquet"));
        let names: Vec<String> = back.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "name", "score", "label"], "{path}");
        assert_eq!(back.schema().field(3).data_type(), &DataType::Int32);
        let ids = back.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let scores = back.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        let labels = back.column(3).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(back.num_rows(), 30, "{path}");
        assert_eq!(labels.null_count(), 0);
        for r in 0..back.num_rows() {
            let i: i64 = ids.value(r)[1..].parse().unwrap();
            assert_eq!((scores.value(r), labels.value(r) as i64), (i, i % 3), "{path}: row {}", ids.value(r));
        }
        // Sorted paths: label=0's rows first, then label=1's, then label=2's.
        let order: Vec<i32> = labels.values().to_vec();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{path}: {order:?}");
    }
}

/// pipe reads its own partitioned output back with every partition column restored.
#[test]
fn collect_table_reads_a_table_that_sink_table_partitioned() {
    let dir = tempfile::tempdir().unwrap();
    write_partitioned(dir.path(), ROWS);
    write(
        dir.path(),
        "r.toml",
        "[pipeline]\nname = \"r\"\noutput_dir = \"back\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
         path = \"out/samples.parquet\"\nid_column = \"id\"\n\n[[stage]]\nid = \"q\"\nuses = \"preprocess.sql\"\n\
         query = \"SELECT * FROM batch ORDER BY id\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
         path = \"rows.jsonl\"\n",
    );
    let out = pipe_output(&["run", "r.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let back = std::fs::read_to_string(dir.path().join("back/rows.jsonl")).unwrap();
    let mut got: Vec<String> = back
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("[{}, {}, {}, {}]", v["id"], v["label"], v["kind"], v["score"])
        })
        .collect();
    got.sort();
    let want: Vec<String> = expected(ROWS).iter().map(|l| l.replace("\", ", "\",").replace(", ", ",")).collect();
    let got: Vec<String> = got.iter().map(|l| l.replace("\", ", "\",").replace(", ", ",")).collect();
    assert_eq!(got, want);
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A partitioned run killed inside a sink's commit (its data durable, its log line not) leaves no
/// part behind, and the next run ends with the parts of an uninterrupted run, byte for byte.
#[test]
fn a_partitioned_run_killed_inside_a_commit_resumes_to_identical_parts() {
    let dir = tempfile::tempdir().unwrap();
    write_partitioned(dir.path(), ROWS);
    let reference = files(&dir.path().join("out/samples.parquet"));
    let toml = std::fs::read_to_string(dir.path().join("w.toml")).unwrap();
    write(dir.path(), "k.toml", toml.replace("name = \"w\"", "name = \"w\"\nbatch_size = 4\noutput_dir = \"killed\""));
    let pause = dir.path().join("paused");
    let mut child = common::pipe()
        .args(["run", "k.toml", "--quiet"])
        .current_dir(dir.path())
        .env("PIPE_COMMIT_INTERVAL", "0")
        .env("PIPE_TEST_PAUSE", "commit:5")
        .env("PIPE_TEST_PAUSE_FILE", &pause)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pause.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its fifth commit");
        assert!(std::time::Instant::now() < deadline, "the run never reached its fifth commit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = dir.path().join("killed");
    assert!(!killed.join("samples.parquet").exists(), "a killed run left parts: {:?}", files(&killed).keys());
    let out = pipe_output(&["run", "k.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let resumed = common::run_json(&killed)["stages"][0]["resumed"].as_u64().unwrap_or(0);
    assert!(resumed > 0 && resumed < ROWS as u64, "{resumed} rows resumed");
    assert!(files(&killed.join("samples.parquet")) == reference, "the resumed run's parts differ");
}
