//! Corpus cases: tables read by `collect.table`. The bad files are made on the spot, from rows
//! generated here and corrupted at a known place (a ragged row, a value of the wrong type, a
//! broken JSON line, bytes overwritten in a Parquet data page, a flipped bit in an Arrow batch, a
//! file cut short), so nothing binary is committed and each case says exactly what is wrong.
//! Every pipeline reads with `collect.table` and writes `out/rows.parquet` with `sink.table`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::{Case, pipeline};

/// Rows in the large generated tables.
const ROWS: u64 = 3000;

/// The cases.
pub fn cases() -> Vec<Case> {
    vec![
        // CSV: one bad row costs that row; "fail" names the file and line.
        loud(Case::run("a ragged CSV row, skipped", |d| csv(d, "skip", ragged)))
            .accounts(ROWS, "out/rows.parquet")
            .rejects(&["rows.csv:2004", "2 fields where the header has 3"])
            .says(&["rejects.jsonl"]),
        Case::run("a ragged CSV row, failing", |d| csv(d, "fail", ragged))
            .exits(1)
            .says(&["rows.csv:2004", "2 fields where the header has 3"]),
        Case::run("a CSV value of the wrong type, skipped", |d| csv(d, "skip", bad_type))
            .accounts(ROWS, "out/rows.parquet")
            .rejects(&["rows.csv:2502"]),
        Case::run("a CSV value of the wrong type, failing", |d| csv(d, "fail", bad_type))
            .exits(1)
            .says(&["rows.csv:2502", "column `score`: \"many\" is not Int64"]),
        Case::run("a CSV value that is not UTF-8, skipped", |d| csv_bytes(d, "skip", not_utf8_csv()))
            .accounts(ROWS, "out/rows.parquet"),
        Case::run("a CSV value that is not UTF-8, failing", |d| csv_bytes(d, "fail", not_utf8_csv()))
            .exits(1)
            .says(&["rows.csv:1001", "field 3 (`note`) is not UTF-8 text"]),
        Case::run("a bad CSV row after quoted newlines, failing", |d| csv(d, "fail", multiline))
            .exits(1)
            .says(&["rows.csv:2505", "column `score`"]),
        Case::run("an empty id_column value, skipped", |d| {
            std::fs::write(d.join("rows.csv"), "name,score\na,1\n,2\nc,3\n").unwrap();
            pipeline(d, &toml("rows.csv", "skip", "id_column = \"name\"\n"));
        })
        .accounts(3, "out/rows.parquet"),
        // JSONL: one broken line costs that line.
        Case::run("a broken JSONL line, skipped", |d| jsonl(d, "skip", broken_line))
            .accounts(ROWS, "out/rows.parquet")
            .rejects(&["rows.jsonl:2002", "not valid JSON"]),
        Case::run("a broken JSONL line, failing", |d| jsonl(d, "fail", broken_line))
            .exits(1)
            .says(&["rows.jsonl:2002", "not valid JSON"]),
        Case::run("a JSONL line that is not UTF-8, failing", |d| {
            let mut text = jsonl_text(|i, line| if i == 77 { line.replace("r77", "r\u{e9}") } else { line });
            let at = text.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
            text.splice(at..at + 2, [0xe9]);
            std::fs::write(d.join("rows.jsonl"), text).unwrap();
            pipeline(d, &toml("rows.jsonl", "fail", ""));
        })
        .exits(1)
        .says(&["rows.jsonl:77", "the line is not UTF-8 text"]),
        // Parquet: a corrupt row group costs its own rows, counted from the footer.
        Case::run("a Parquet file corrupted in the middle, skipped", |d| parquet(d, "skip", true))
            .accounts(ROWS, "out/rows.parquet")
            .rejects(&["row group 3 of 6 is corrupt, 500 rows not read", "\"rows\":500"]),
        Case::run("a Parquet file corrupted in the middle, failing", |d| parquet(d, "fail", true))
            .exits(1)
            .says(&["rows.parquet", "row group 3 of 6 is corrupt, 500 rows not read (rows 1000-1499 of the file)"]),
        Case::validate("a truncated Parquet file", |d| {
            let bytes = parquet_bytes(false);
            std::fs::write(d.join("rows.parquet"), &bytes[..bytes.len() / 2]).unwrap();
            pipeline(d, &toml("rows.parquet", "skip", ""));
        })
        .exits(2)
        .says(&["rows.parquet: cannot read the Parquet footer"]),
        Case::run("a truncated Parquet file after a good one", |d| {
            let bytes = parquet_bytes(false);
            write(d, "data/a.parquet", &bytes);
            write(d, "data/b.parquet", &bytes[..bytes.len() / 2]);
            pipeline(d, &toml("data/*.parquet", "fail", ""));
        })
        .exits(1)
        .says(&["data/b.parquet", "its row count is unknown"]),
        // Arrow IPC: a corrupt record batch costs its own rows, counted from its header.
        Case::run("a bit-flipped Arrow batch, skipped", |d| arrow(d, "skip")).accounts(ROWS, "out/rows.parquet"),
        Case::run("a bit-flipped Arrow batch, failing", |d| arrow(d, "fail"))
            .exits(1)
            .says(&["rows.arrow", "record batch 2 of 3 is corrupt, 1000 rows not read"]),
        Case::validate("a truncated Arrow file", |d| {
            let bytes = arrow_bytes(None);
            std::fs::write(d.join("rows.arrow"), &bytes[..bytes.len() - 100]).unwrap();
            pipeline(d, &toml("rows.arrow", "skip", ""));
        })
        .exits(2)
        .says(&["rows.arrow", "no Arrow IPC footer"]),
        Case::run("a truncated Arrow file after a good one", |d| {
            let bytes = arrow_bytes(None);
            write(d, "data/a.arrow", &bytes);
            write(d, "data/b.arrow", &bytes[..bytes.len() - 100]);
            pipeline(d, &toml("data/*.arrow", "fail", ""));
        })
        .exits(1)
        .says(&["data/b.arrow", "its row count is unknown"]),
        // Empty files: a clear word for each format.
        Case::validate("a zero-length CSV file", |d| empty(d, "rows.csv"))
            .exits(2)
            .says(&["rows.csv: the file is empty (0 bytes): a CSV file starts with a header line"]),
        Case::validate("a zero-length Parquet file", |d| empty(d, "rows.parquet"))
            .exits(2)
            .says(&["rows.parquet: the file is empty (0 bytes), so it is not a Parquet file"]),
        Case::validate("a zero-length JSONL file", |d| empty(d, "rows.jsonl"))
            .exits(2)
            .says(&["rows.jsonl: the file is empty (0 bytes)"]),
        Case::run("a zero-length CSV file after a good one", |d| {
            write(d, "data/a.csv", b"name,score\na,1\nb,2\nc,3\n");
            write(d, "data/b.csv", b"");
            pipeline(d, &toml("data/*.csv", "skip", ""));
        })
        .accounts(3, "out/rows.parquet"),
        // Paths that are not table files: config errors at `path`, at validate and at run.
        Case::validate("a folder without tables as path", folder)
            .exits(2)
            .says(&["data/ is a folder with no table files in it", ".parquet"]),
        Case::run("a folder without tables as path, at run", folder)
            .exits(2)
            .says(&["data/ is a folder with no table files in it"]),
        Case::validate("a symlink loop as path", symlink_loop).exits(2).says(&["rows.csv is a symlink loop"]),
        Case::run("a symlink loop as path, at run", symlink_loop).exits(2).says(&["rows.csv is a symlink loop"]),
        // A file name with spaces and quotes is named as it is.
        Case::run("a file name with spaces and quotes, skipped", |d| odd_name(d, "skip"))
            .accounts(3, "out/rows.parquet"),
        Case::run("a file name with spaces and quotes, failing", |d| odd_name(d, "fail"))
            .exits(1)
            .says(&["my \"odd\" rows.csv:3"]),
    ]
}

/// Without `--quiet`, so the summary (and the rejects file) are printed.
fn loud(case: Case) -> Case {
    Case { args: vec!["run".into(), "p.toml".into()], ..case }
}

/// A pipeline that reads `path` with `collect.table` (plus `extra` keys) and writes
/// `out/rows.parquet`.
fn toml(path: &str, on_error: &str, extra: &str) -> String {
    let path = path.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[pipeline]\nname = \"bad\"\noutput_dir = \"out\"\non_error = \"{on_error}\"\nmax_rejects = -1\n\n\
         [[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{path}\"\n{extra}\n\
         [[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"rows.parquet\"\n"
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The data row `i` (from 1) of the CSV, changed by `edit`.
fn csv_text(edit: fn(u64, String) -> String) -> Vec<u8> {
    let mut text = String::from("name,score,note\n");
    for i in 1..=ROWS {
        text.push_str(&edit(i, format!("r{i},{i},note {i}")));
        text.push('\n');
    }
    text.into_bytes()
}

fn csv(dir: &Path, on_error: &str, edit: fn(u64, String) -> String) {
    csv_bytes(dir, on_error, csv_text(edit));
}

fn csv_bytes(dir: &Path, on_error: &str, bytes: Vec<u8>) {
    std::fs::write(dir.join("rows.csv"), bytes).unwrap();
    pipeline(dir, &toml("rows.csv", on_error, ""));
}

/// Row 2,003 (line 2,004) has 2 fields.
fn ragged(i: u64, row: String) -> String {
    if i == 2003 { "r2003,2003".to_string() } else { row }
}

/// Row 2,501 (line 2,502) has text in the int column.
fn bad_type(i: u64, row: String) -> String {
    if i == 2501 { "r2501,many,x".to_string() } else { row }
}

/// Rows 10 and 20 have a quoted note over two lines, so row 2,502 starts on line 2,505.
fn multiline(i: u64, row: String) -> String {
    match i {
        10 | 20 => format!("r{i},{i},\"two\nlines\""),
        2502 => "r2502,many,x".to_string(),
        _ => row,
    }
}

/// Row 1,000 (line 1,001) has a note with a byte that is not UTF-8.
fn not_utf8_csv() -> Vec<u8> {
    let mut text = csv_text(|i, row| if i == 1000 { "r1000,1000,caf\u{e9}".to_string() } else { row });
    let at = text.windows(5).position(|w| w == "caf\u{e9}".as_bytes()).unwrap() + 3;
    text.splice(at..at + 2, [0xe9]);
    text
}

fn jsonl_text(edit: impl Fn(u64, String) -> String) -> Vec<u8> {
    let mut text = String::new();
    for i in 1..=ROWS {
        text.push_str(&edit(i, format!("{{\"name\": \"r{i}\", \"score\": {i}}}")));
        text.push('\n');
    }
    text.into_bytes()
}

/// Line 2,002 is cut off after 14 characters.
fn broken_line(i: u64, line: String) -> String {
    if i == 2002 { line[..14].to_string() } else { line }
}

fn jsonl(dir: &Path, on_error: &str, edit: fn(u64, String) -> String) {
    std::fs::write(dir.join("rows.jsonl"), jsonl_text(edit)).unwrap();
    pipeline(dir, &toml("rows.jsonl", on_error, ""));
}

/// `name` (Utf8) and `score` (Int64) of 3,000 rows, neither nullable.
fn rows_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("score", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| format!("row {i}")))),
        Arc::new(Int64Array::from_iter_values(0..ROWS as i64)),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// 3,000 rows in 6 row groups of 500; `corrupt` overwrites bytes in the first data page of row
/// group 3's `name` column, where the dictionary indices start (the parquet crate panics there in
/// debug builds: the panic must not reach the user).
fn parquet_bytes(corrupt: bool) -> Vec<u8> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let batch = rows_batch();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(500))
        .set_data_page_row_count_limit(100)
        .set_write_batch_size(100)
        .build();
    let mut bytes = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    if !corrupt {
        return bytes;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let reader = SerializedFileReader::new(file.reopen().unwrap()).unwrap();
    let (start, len) = reader.metadata().row_group(2).column(0).byte_range();
    let pages = reader.get_row_group(2).unwrap().get_column_page_reader(0).unwrap();
    let page = pages.map(|p| p.unwrap()).find(|p| p.page_type() == parquet::basic::PageType::DATA_PAGE).unwrap();
    let chunk = &bytes[start as usize..(start + len) as usize];
    let data = &page.buffer()[..16];
    let at = start as usize + chunk.windows(16).position(|w| w == data).unwrap();
    // After the bit width, the first run's header is a varint that 0xff bytes never end.
    bytes[at + 1..at + 17].fill(0xff);
    bytes
}

fn parquet(dir: &Path, on_error: &str, corrupt: bool) {
    std::fs::write(dir.join("rows.parquet"), parquet_bytes(corrupt)).unwrap();
    pipeline(dir, &toml("rows.parquet", on_error, ""));
}

/// 3 record batches of 1,000 rows; with `flip`, batch `flip` has the top bit of its first `name`
/// offset flipped, so the offsets go backwards.
fn arrow_bytes(flip: Option<usize>) -> Vec<u8> {
    let batch = rows_batch();
    let mut bytes = Vec::new();
    let mut w = arrow::ipc::writer::FileWriter::try_new(&mut bytes, &batch.schema()).unwrap();
    for i in 0..3 {
        w.write(&batch.slice(i * 1000, 1000)).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    if let Some(n) = flip {
        let footer_len = u32::from_le_bytes(bytes[bytes.len() - 10..bytes.len() - 6].try_into().unwrap()) as usize;
        let footer_at = bytes.len() - 10 - footer_len;
        let footer = arrow::ipc::root_as_footer(&bytes[footer_at..bytes.len() - 10]).unwrap();
        let block = footer.recordBatches().unwrap().get(n);
        let body = (block.offset() + block.metaDataLength() as i64) as usize;
        // The `name` column has no nulls, so its buffers start with the offsets; the second one
        // (after the 0) gets its top bit.
        bytes[body + 7] ^= 0x80;
    }
    bytes
}

fn arrow(dir: &Path, on_error: &str) {
    std::fs::write(dir.join("rows.arrow"), arrow_bytes(Some(1))).unwrap();
    pipeline(dir, &toml("rows.arrow", on_error, ""));
}

fn empty(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
    pipeline(dir, &toml(name, "skip", ""));
}

fn folder(dir: &Path) {
    write(dir, "data/notes.txt", b"not a table");
    pipeline(dir, &toml("data", "skip", ""));
}

fn symlink_loop(dir: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink("rows.csv", dir.join("rows.csv")).unwrap();
    pipeline(dir, &toml("rows.csv", "skip", ""));
}

/// `my "odd" rows.csv`, whose row 2 (line 3) has a field too many.
fn odd_name(dir: &Path, on_error: &str) {
    write(dir, "my \"odd\" rows.csv", b"name,score\na,1\nb,2,3\nc,3\n");
    pipeline(dir, &toml("my \"odd\" rows.csv", on_error, ""));
}
