//! Table files: which format a file's extension means. The one mapping `collect.table` (reading),
//! `sink.table` (writing) and the Python SDK (`plugins/python/pipe_plugin/formats.py`, checked
//! against [`EXTENSIONS`] by a test) use.
//!
//! Extensions are matched case-insensitively.

use std::path::Path;

/// A table file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableFormat {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header line.
    Csv,
    /// JSON lines: one JSON object a line.
    Jsonl,
    /// An Arrow IPC file (Feather v2).
    Arrow,
}

/// Every table extension (lower case, without the dot) and its format, the usual one of each
/// format first.
pub const EXTENSIONS: &[(&str, TableFormat)] = &[
    ("parquet", TableFormat::Parquet),
    ("pq", TableFormat::Parquet),
    ("csv", TableFormat::Csv),
    ("jsonl", TableFormat::Jsonl),
    ("ndjson", TableFormat::Jsonl),
    ("arrow", TableFormat::Arrow),
    ("ipc", TableFormat::Arrow),
    ("feather", TableFormat::Arrow),
];

impl TableFormat {
    /// Every format, in the order of [`EXTENSIONS`].
    pub const ALL: [TableFormat; 4] = [TableFormat::Parquet, TableFormat::Csv, TableFormat::Jsonl, TableFormat::Arrow];

    /// The format of a file by its extension, or `None` when it has none of [`EXTENSIONS`].
    pub fn from_path(path: &Path) -> Option<TableFormat> {
        let ext = path.extension()?.to_str()?;
        TableFormat::from_extension(ext)
    }

    /// The format of an extension (without the dot, any case).
    pub fn from_extension(ext: &str) -> Option<TableFormat> {
        EXTENSIONS.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)).map(|(_, f)| *f)
    }

    /// The usual extension of the format, without the dot: "parquet", "csv", "jsonl", "arrow".
    pub fn extension(self) -> &'static str {
        self.extensions().next().expect("every format has an extension")
    }

    /// The format's extensions, the usual one first.
    pub fn extensions(self) -> impl Iterator<Item = &'static str> {
        EXTENSIONS.iter().filter(move |(_, f)| *f == self).map(|(e, _)| *e)
    }

    /// The format's key in the Python SDK's mapping: "parquet", "csv", "jsonl", "arrow".
    pub fn key(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Csv => "csv",
            TableFormat::Jsonl => "jsonl",
            TableFormat::Arrow => "arrow",
        }
    }

    /// The format's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Parquet => "Parquet",
            TableFormat::Csv => "CSV",
            TableFormat::Jsonl => "JSONL",
            TableFormat::Arrow => "Arrow IPC",
        }
    }
}

/// The accepted extensions for messages, one group a format:
/// `.parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather` (as the Python SDK says them).
pub fn expected_extensions() -> String {
    let groups: Vec<String> = TableFormat::ALL
        .iter()
        .map(|f| f.extensions().map(|e| format!(".{e}")).collect::<Vec<_>>().join("/"))
        .collect();
    let (last, rest) = groups.split_last().expect("there are formats");
    format!("{} or {last}", rest.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_name_their_formats_in_any_case() {
        assert_eq!(TableFormat::from_path(Path::new("a/rows.PQ")), Some(TableFormat::Parquet));
        assert_eq!(TableFormat::from_path(Path::new("rows.ndjson")), Some(TableFormat::Jsonl));
        assert_eq!(TableFormat::from_path(Path::new("rows.feather")), Some(TableFormat::Arrow));
        assert_eq!(TableFormat::from_path(Path::new("rows.txt")), None);
        assert_eq!(TableFormat::from_path(Path::new("parquet")), None);
        assert_eq!(TableFormat::ALL.map(TableFormat::extension), ["parquet", "csv", "jsonl", "arrow"]);
        assert_eq!(expected_extensions(), ".parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather");
    }

    /// `ALL` lists the formats in the order `EXTENSIONS` first names them.
    #[test]
    fn all_follows_the_extensions() {
        let mut seen = Vec::new();
        for (_, f) in EXTENSIONS {
            if !seen.contains(f) {
                seen.push(*f);
            }
        }
        assert_eq!(seen, TableFormat::ALL);
    }

    /// The Python SDK's `TABLE_EXTENSIONS` is the same mapping, in the same order, so the two
    /// cannot drift apart.
    #[test]
    fn the_python_sdk_maps_the_same_extensions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/python/pipe_plugin/formats.py");
        let text = std::fs::read_to_string(path).expect("the Python SDK's formats.py");
        let start = text.find("TABLE_EXTENSIONS: dict[str, str] = {").expect("TABLE_EXTENSIONS in formats.py");
        let body = &text[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').expect("the end of TABLE_EXTENSIONS")];
        let python: Vec<(String, String)> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (ext, fmt) = l.trim_end_matches(',').split_once(':').unwrap_or_else(|| panic!("{l:?}"));
                let unquote = |s: &str| s.trim().trim_matches('"').to_string();
                (unquote(ext), unquote(fmt))
            })
            .collect();
        let rust: Vec<(String, String)> =
            EXTENSIONS.iter().map(|(e, f)| (format!(".{e}"), f.key().to_string())).collect();
        assert_eq!(python, rust, "plugins/python/pipe_plugin/formats.py and pipeline/src/formats.rs differ");
    }
}
