//! Files that change while they are read, after the first file's schema was taken at build time:
//! cut short or grown between two batches. Nothing panics, and every row is accounted for: the
//! rows that are there when the reader reaches them are read or rejected, a row cut in half is
//! rejected, and where a cut takes a batch's header with it the reject says its count is unknown.

use std::path::Path;

use super::read::Format;
use super::read::testing::{append, arrow_file, cut, names_and_scores, read_changing, shape_of};

fn csv(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("r{i},{i}\n")).collect()
}

fn jsonl(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("{{\"name\": \"r{i}\", \"score\": {i}}}\n")).collect()
}

fn setup(dir: &Path, format: Format, text: &str) -> (std::path::PathBuf, super::shape::Shape) {
    let path = dir.join(format!("t.{}", format.extension()));
    std::fs::write(&path, text).unwrap();
    let shape = shape_of(&super::read::schema(format, &path, "t").unwrap());
    (path, shape)
}

#[test]
fn a_text_file_that_grows_while_read_gives_its_new_rows_too() {
    for (format, head, rows, more) in [
        (Format::Csv, "name,score\n", csv(0, 1000), csv(1000, 1500)),
        (Format::Jsonl, "", jsonl(0, 1000), jsonl(1000, 1500)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (path, shape) = setup(dir.path(), format, &format!("{head}{rows}"));
        let got = read_changing(format, &path, &shape, 64, |n| {
            if n == 1 {
                append(&path, more.as_bytes())
            }
        });
        assert!(got.rejects.is_empty(), "{format:?}: {:?}", got.rejects);
        assert_eq!((got.emitted(), got.rows), (1500, 1500), "{format:?}");
    }
}

#[test]
fn a_text_file_cut_while_read_rejects_the_row_cut_in_half() {
    // Larger than the reader's buffer, so the cut is not read from memory.
    for (format, head, rows) in [(Format::Csv, "name,score\n", csv(0, 20_000)), (Format::Jsonl, "", jsonl(0, 20_000))] {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{head}{rows}");
        let (path, shape) = setup(dir.path(), format, &text);
        // Cut inside row 15,000: its first half stays, as a short last line.
        let at = text.find(if format == Format::Csv { "r15000," } else { "\"r15000\"" }).unwrap() + 3;
        let got = read_changing(format, &path, &shape, 64, |n| {
            if n == 1 {
                cut(&path, at as u64)
            }
        });
        assert_eq!(got.emitted(), 15_000, "{format:?}: {:?}", got.rejects);
        assert_eq!(got.rejects.len(), 1, "{format:?}: {:?}", got.rejects);
        assert_eq!((got.rejected(), got.rows), (1, 15_001), "{format:?}");
    }
}

#[test]
fn an_arrow_file_cut_while_read_rejects_the_batches_past_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.arrow");
    std::fs::write(&path, arrow_file(&names_and_scores(400), 100)).unwrap();
    let shape = shape_of(&super::read::schema(Format::Arrow, &path, "t").unwrap());
    // Cut inside the body of batch 3: its header still counts its rows, batch 4 is gone whole.
    let (offset, meta, _) = super::ipc::batch_blocks(&path)[2];
    let got = read_changing(Format::Arrow, &path, &shape, 64, |n| {
        if n == 1 {
            cut(&path, offset + meta + 10)
        }
    });
    assert_eq!(got.emitted(), 200, "{:?}", got.rejects);
    let rejects: Vec<(u64, bool)> = got.rejects.iter().map(|r| (r.1, r.2.contains("count is unknown"))).collect();
    assert_eq!(rejects, [(100, false), (1, true)], "{:?}", got.rejects);
}
