//! Hive partitions of a dataset folder: the `KEY=VALUE` folders between the dataset's root and a
//! file become columns of the file's rows, as pyarrow, polars and duckdb read them with hive
//! partitioning. Names and values are percent-decoded (`%2F` is `/`), a value of
//! `__HIVE_DEFAULT_PARTITION__` is null, and a column's type is inferred as pyarrow infers it:
//! Int32 when every value is a 32-bit integer, else text. Folders without `=` are not partitions.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, StringArray, new_null_array};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use pipeline::{Error, Result};

/// The folder name of a null partition value, as Hive names it.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The partition columns of a dataset and each file's values of them.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    /// The columns, in folder order, with their inferred types.
    pub fields: Vec<Field>,
    /// Per file, its value of each column (`None`: null).
    values: Vec<Vec<Option<String>>>,
}

/// A file's partition folders under `root`: (name, value) per `KEY=VALUE` folder, in order.
fn folders(root: &Path, file: &Path) -> Vec<(String, Option<String>)> {
    let Some(folder) = file.parent().and_then(|f| f.strip_prefix(root).ok()) else { return Vec::new() };
    folder
        .iter()
        .filter_map(|c| {
            let c = c.to_string_lossy();
            let (key, value) = c.split_once('=')?;
            let value = (value != NULL_PARTITION).then(|| decode(value));
            Some((decode(key), value))
        })
        .collect()
}

/// `text` with its `%XX` escapes decoded (an escape that is not two hex digits stays as it is).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Partitions {
    /// The partitions of `files` (named by `names` in messages) under `root`: the first file's
    /// folders name the columns, and every file must lie under the same ones, else a config error
    /// at `path` naming the file.
    pub(crate) fn discover(root: &Path, files: &[&Path], names: &[&str]) -> Result<Partitions> {
        let mut keys: Vec<String> = Vec::new();
        let mut values = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let found = folders(root, file);
            let these: Vec<String> = found.iter().map(|(k, _)| k.clone()).collect();
            if i == 0 {
                keys = these;
            } else if these != keys {
                let list = |k: &[String]| if k.is_empty() { "none".to_string() } else { k.join(", ") };
                return Err(Error::config(
                    "path",
                    format!(
                        "{} lies under partition folders of {}, but {} under those of {}",
                        names[i],
                        list(&these),
                        names[0],
                        list(&keys)
                    ),
                )
                .with_hint("every file of a partitioned dataset lies under the same KEY=VALUE folders"));
            }
            values.push(found.into_iter().map(|(_, v)| v).collect::<Vec<_>>());
        }
        let fields = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let ints = values
                    .iter()
                    .filter_map(|v: &Vec<Option<String>>| v[k].as_deref())
                    .all(|v| v.parse::<i32>().is_ok());
                Field::new(key, if ints { DataType::Int32 } else { DataType::Utf8 }, true)
            })
            .collect();
        Ok(Partitions { fields, values })
    }

    /// Whether the dataset has partition columns.
    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The column `name` of file `file` for `rows` rows: its value repeated, or `None` when `name`
    /// is no partition column.
    fn column(&self, name: &str, file: usize, rows: usize) -> Option<ArrayRef> {
        let k = self.fields.iter().position(|f| f.name() == name)?;
        let field = &self.fields[k];
        let Some(value) = &self.values[file][k] else { return Some(new_null_array(field.data_type(), rows)) };
        Some(match field.data_type() {
            DataType::Int32 => Arc::new(Int32Array::from_value(value.parse().unwrap_or_default(), rows)),
            _ => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(value, rows))),
        })
    }

    /// `batch` (the file's columns of the output) with the partition columns of file `file`
    /// added where the output `schema` has them.
    pub(crate) fn complete(
        &self,
        batch: RecordBatch,
        file: usize,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<RecordBatch> {
        if self.is_empty() {
            return Ok(batch);
        }
        let rows = batch.num_rows();
        let columns = schema
            .fields()
            .iter()
            .map(|f| match self.column(f.name(), file, rows) {
                Some(c) => Ok(c),
                None => pipeline::columns::column(&batch, f.name()).cloned(),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn folders_become_columns_decoded_and_typed_as_pyarrow_types_them() {
        let root = PathBuf::from("/d");
        let files = [
            root.join("label=10/kind=a%2Fb/part-0.parquet"),
            root.join("label=__HIVE_DEFAULT_PARTITION__/kind=c/part-0.parquet"),
            root.join("label=-3/kind=d%3De/x/part-0.parquet"),
        ];
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let p = Partitions::discover(&root, &refs, &["a", "b", "c"]).unwrap();
        let types: Vec<(&str, &DataType)> = p.fields.iter().map(|f| (f.name().as_str(), f.data_type())).collect();
        assert_eq!(types, [("label", &DataType::Int32), ("kind", &DataType::Utf8)]);
        let labels = p.column("label", 1, 2).unwrap();
        assert_eq!(labels.null_count(), 2);
        let kinds = p.column("kind", 2, 1).unwrap();
        assert_eq!(kinds.as_any().downcast_ref::<StringArray>().unwrap().value(0), "d=e");
        let big = [root.join("n=1/a.parquet"), root.join("n=3000000000/a.parquet")];
        let refs: Vec<&Path> = big.iter().map(PathBuf::as_path).collect();
        let p = Partitions::discover(&root, &refs, &["a", "b"]).unwrap();
        assert_eq!(p.fields[0].data_type(), &DataType::Utf8, "past Int32, pyarrow reads text");
    }

    #[test]
    fn files_under_other_partition_folders_are_a_config_error() {
        let root = PathBuf::from("/d");
        let files = [root.join("label=1/a.parquet"), root.join("b.parquet")];
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let Err(Error::Config { key, message, .. }) = Partitions::discover(&root, &refs, &["d/label=1/a", "d/b"])
        else {
            panic!("mixed layouts were read")
        };
        assert_eq!(key.as_deref(), Some("path"));
        assert_eq!(message, "d/b lies under partition folders of none, but d/label=1/a under those of label");
    }

    #[test]
    fn a_bad_escape_stays_as_it_is() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("a%2fb%zz"), "a/b%zz");
    }
}
