//! Hive-style partitions for `sink.table partition_by`: each row goes to the folder
//! `COL=VALUE/...` of its partition columns' values, the way Hive, pyarrow, polars and duckdb lay
//! out and read a partitioned dataset. Names and values are escaped as Hive escapes them (`/`,
//! `=`, `%`, control characters and a few more become `%XX`), and a null or empty value is
//! Hive's default partition, `__HIVE_DEFAULT_PARTITION__`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, UInt32Array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pipeline::{Error, Result};

/// The folder name of a null (or empty) partition value, as Hive names it.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The partition columns of a sink, checked against its input.
#[derive(Debug)]
pub(crate) struct Partitioning {
    /// The column names, in folder order.
    columns: Vec<String>,
    /// Their names as folder-name prefixes: escaped, with the `=`.
    prefixes: Vec<String>,
}

/// Whether a column of type `t` can name a folder: integers, text, booleans and dates.
fn can_partition(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => true,
        Utf8 | LargeUtf8 | Utf8View | Boolean | Date32 => true,
        Dictionary(_, values) => can_partition(values),
        _ => false,
    }
}

impl Partitioning {
    /// The partitioning by `columns` of `input`; a column that is missing, named twice or of a
    /// type that cannot be a folder name is a config error at `partition_by`.
    pub(crate) fn new(columns: &[String], input: &Schema) -> Result<Partitioning> {
        for (i, name) in columns.iter().enumerate() {
            let field = pipeline::columns::require(input, "partition_by", name, &[])?;
            if !can_partition(field.data_type()) {
                return Err(Error::config(
                    "partition_by",
                    format!("column `{name}` is {}, which cannot be a partition value", field.data_type()),
                )
                .with_hint("partition by integer, text, boolean or date columns"));
            }
            if columns[..i].contains(name) {
                return Err(Error::config("partition_by", format!("column `{name}` is named twice")));
            }
        }
        let prefixes = columns.iter().map(|c| format!("{}=", escape(c))).collect();
        Ok(Partitioning { columns: columns.to_vec(), prefixes })
    }

    /// The partition column names.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// How many folders deep a part lies.
    pub(crate) fn depth(&self) -> usize {
        self.columns.len()
    }

    /// The rows of `batch` by partition: each partition's folder (relative, `COL=VALUE/...`) and
    /// its rows with the columns of `files`, in their order in `batch`; the partitions in the
    /// order of their first row.
    pub(crate) fn split(&self, batch: &RecordBatch, files: &SchemaRef) -> Result<Vec<(PathBuf, RecordBatch)>> {
        let options = FormatOptions::default();
        let columns =
            self.columns.iter().map(|name| pipeline::columns::column(batch, name)).collect::<Result<Vec<_>>>()?;
        let formatters = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let (mut folder, mut value) = (String::new(), String::new());
        for row in 0..batch.num_rows() {
            folder.clear();
            for (i, (column, formatter)) in columns.iter().zip(&formatters).enumerate() {
                if i > 0 {
                    folder.push('/');
                }
                folder.push_str(&self.prefixes[i]);
                value.clear();
                if column.is_valid(row) {
                    write!(value, "{}", formatter.value(row)).map_err(|e| Error::msg(e.to_string()))?;
                }
                match value.is_empty() {
                    true => folder.push_str(NULL_PARTITION),
                    false => escape_into(&value, &mut folder),
                }
            }
            match index.get(&folder) {
                Some(&g) => groups[g].1.push(row as u32),
                None => {
                    index.insert(folder.clone(), groups.len());
                    groups.push((folder.clone(), vec![row as u32]));
                }
            }
        }
        let rows = pipeline::columns::select(batch, files)?;
        if groups.len() == 1 {
            let (folder, _) = groups.pop().expect("one group");
            return Ok(vec![(PathBuf::from(folder), rows)]);
        }
        groups
            .into_iter()
            .map(|(folder, take)| {
                let part = arrow::compute::take_record_batch(&rows, &UInt32Array::from(take))?;
                Ok((PathBuf::from(folder), part))
            })
            .collect()
    }

    /// Removes the parts named `part` under `root` that lie in a partition folder not in `kept`
    /// (an earlier run's partitions that this one has no rows for), and the folders that leaves
    /// empty. Other files are never touched: other shards' parts stay.
    pub(crate) fn remove_stale(&self, root: &Path, part: &str, kept: &HashSet<PathBuf>) -> Result<()> {
        let mut stale = Vec::new();
        self.find_parts(root, Path::new(""), part, kept, &mut stale);
        for path in stale {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            // Empty folders up to the root go too; a folder still holding files stays.
            let mut folder = path.parent();
            while let Some(f) = folder.filter(|f| *f != root) {
                if std::fs::remove_dir(f).is_err() {
                    break;
                }
                folder = f.parent();
            }
        }
        Ok(())
    }

    /// Collects into `out` the parts named `part` under `root/folder` whose partition folder is
    /// not in `kept`: only `COL=...` folders of each partition column in turn are entered.
    fn find_parts(&self, root: &Path, folder: &Path, part: &str, kept: &HashSet<PathBuf>, out: &mut Vec<PathBuf>) {
        let level = folder.iter().count();
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else { return };
        for entry in entries.filter_map(|e| e.ok()) {
            let (name, Ok(kind)) = (entry.file_name(), entry.file_type()) else { continue };
            if level == self.depth() {
                if kind.is_file() && name == part && !kept.contains(folder) {
                    out.push(entry.path());
                }
            } else if kind.is_dir() && name.to_string_lossy().starts_with(self.prefixes[level].as_str()) {
                self.find_parts(root, &folder.join(&name), part, kept, out);
            }
        }
    }
}

/// Whether Hive escapes `c` in a folder name: control characters, `"`, `#`, `%`, `'`, `*`, `/`,
/// `:`, `=`, `?`, `\`, DEL, `{`, `[`, `]` and `^` (and NUL, which no file name can hold).
fn is_escaped(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x1f' | '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '\x7f' | '{' | '[' | ']' | '^'
    )
}

/// `text` as Hive writes it into a folder name.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text, &mut out);
    out
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        if is_escaped(c) {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, ListArray, StringArray};
    use arrow::datatypes::{Field, Int32Type};

    use super::*;

    #[test]
    fn names_and_values_are_escaped_as_hive_escapes_them() {
        assert_eq!(escape("a/b=c%d"), "a%2Fb%3Dc%25d");
        assert_eq!(escape("tab\there\nnul\0"), "tab%09here%0Anul%00");
        assert_eq!(escape("x:y?z#[]^{}*'\"\\\x7f"), "x%3Ay%3Fz%23%5B%5D%5E%7B}%2A%27%22%5C%7F");
        assert_eq!(escape("a b.c-d_é"), "a b.c-d_é", "spaces, dots and non-ASCII letters stay");
    }

    #[test]
    fn rows_go_to_their_partition_in_order_and_nulls_to_the_default_one() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec!["0", "1", "2", "3", "4"])) as ArrayRef),
            ("label", Arc::new(Int64Array::from(vec![Some(3), Some(1), Some(3), None, Some(1)])) as ArrayRef),
            ("kind", Arc::new(StringArray::from(vec!["a/b", "c", "a/b", "c", ""])) as ArrayRef),
        ])
        .unwrap();
        let p = Partitioning::new(&["label".into(), "kind".into()], &batch.schema()).unwrap();
        let files = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let got: Vec<(String, Vec<String>)> = p
            .split(&batch, &files)
            .unwrap()
            .into_iter()
            .map(|(folder, rows)| {
                assert_eq!(rows.num_columns(), 1, "the partition columns are not in the files");
                let ids = pipeline::columns::ids(&rows).unwrap().iter().flatten().map(String::from).collect();
                (folder.display().to_string(), ids)
            })
            .collect();
        let want = [
            ("label=3/kind=a%2Fb", vec!["0", "2"]),
            ("label=1/kind=c", vec!["1"]),
            ("label=__HIVE_DEFAULT_PARTITION__/kind=c", vec!["3"]),
            ("label=1/kind=__HIVE_DEFAULT_PARTITION__", vec!["4"]),
        ];
        let want: Vec<(String, Vec<String>)> =
            want.iter().map(|(f, ids)| (f.to_string(), ids.iter().map(|s| s.to_string()).collect())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_unknown_or_unfit_column_is_an_error_at_partition_by() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
        let batch = RecordBatch::try_from_iter([
            ("label", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("tokens", Arc::new(list) as ArrayRef),
        ])
        .unwrap();
        let schema = batch.schema();
        let message =
            |names: &[&str]| match Partitioning::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &schema)
            {
                Err(Error::Config { key, message, .. }) => format!("{}: {message}", key.unwrap_or_default()),
                other => panic!("{names:?} partitioned: {other:?}"),
            };
        assert_eq!(message(&["lable"]), "partition_by: the input has no column `lable`");
        assert!(message(&["tokens"]).starts_with("partition_by: column `tokens` is List("), "{}", message(&["tokens"]));
        assert_eq!(message(&["label", "label"]), "partition_by: column `label` is named twice");
    }
}
