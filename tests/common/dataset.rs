//! Reading a run's outputs back for comparisons: a table (one file, or the Parquet parts of a
//! dataset folder) sorted by id, a folder's files with their bytes, and a folder of handwritten
//! digit PNGs to run over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use super::{read_parquet, repo};

/// The Parquet parts of a dataset folder, by name.
pub fn parts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}

/// The table's rows, from one Parquet file or from every part of a dataset folder, sorted by id.
pub fn table_rows(path: &Path) -> RecordBatch {
    let files: Vec<PathBuf> = if path.is_dir() { parts(path) } else { vec![path.to_path_buf()] };
    let batches: Vec<RecordBatch> = files.iter().map(|f| read_parquet(f)).collect();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let order = arrow::compute::sort_to_indices(all.column_by_name("id").unwrap(), None, None).unwrap();
    let columns = all.columns().iter().map(|c| arrow::compute::take(c, &order, None).unwrap()).collect();
    RecordBatch::try_new(all.schema(), columns).unwrap()
}

/// Asserts that two tables hold the same columns and values (`what` names the comparison).
pub fn assert_same_rows(got: &RecordBatch, expected: &RecordBatch, what: &str) {
    assert_eq!(got.schema().fields(), expected.schema().fields(), "{what}: the columns");
    for (k, field) in expected.schema().fields().iter().enumerate() {
        assert_eq!(got.column(k), expected.column(k), "{what}: column {}", field.name());
    }
}

/// Every file directly in `dir`, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
    }
    out
}

/// examples/digits' 360-odd PNGs of handwritten digits, sorted by name.
pub fn example_digits() -> Vec<PathBuf> {
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/digits/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    pngs
}

/// A folder `dir/inputs` of `count` handwritten digits: examples/digits' PNGs under new names
/// (`digit-0000.png`, ...), again from the first once they run out.
pub fn digit_pngs(dir: &Path, count: usize) -> PathBuf {
    let folder = dir.join("inputs");
    std::fs::create_dir_all(&folder).unwrap();
    let pngs = example_digits();
    for i in 0..count {
        std::fs::copy(&pngs[i % pngs.len()], folder.join(format!("digit-{i:04}.png"))).unwrap();
    }
    folder
}
