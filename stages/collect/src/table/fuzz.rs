//! Property-based fuzzing of the four readers, in-process through [`read_file`]: valid files are
//! made from random rows, then mutated (bit flips, truncation, bytes inserted or deleted, a range
//! copied over another), and each is read with the schema of the file before the mutation, as a
//! pipeline built on the good file would read it. Every case checks that no panic escapes and that
//! no row goes missing unaccounted:
//! - CSV and JSONL with whole records replaced by junk: rows emitted + rows rejected = the rows
//!   written, exactly, and every reject names one of the lines that was replaced;
//! - CSV with mutated bytes: emitted + rejected = the data records the CSV grammar finds in the
//!   mutated file (one more when the header no longer fits and is rejected as a row);
//! - JSONL with mutated bytes: emitted + rejected >= the lines that are not blank;
//! - Parquet and Arrow with mutated bytes: emitted + rejected (with the counts of multi-row
//!   rejects) >= the rows written, unless a reject says the file's row count is unknown.
//!
//! Each property runs 256 cases (`PIPE_FUZZ_CASES` sets another count) from a fixed seed, so a run
//! is reproducible; `PIPE_FUZZ_SEED` picks another seed.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use super::read::Format;
use super::read::testing::{Read, arrow_file, read_as_good};

const DEFAULT_CASES: u32 = 256;

fn runner() -> TestRunner {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    TestRunner::new(Config {
        cases: env("PIPE_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as u32),
        rng_seed: RngSeed::Fixed(env("PIPE_FUZZ_SEED").unwrap_or(0)),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    })
}

/// One row of the generated tables.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    score: i64,
    weight: Option<f64>,
}

fn rows(max: usize) -> impl Strategy<Value = Vec<Row>> {
    let row = ("[a-z ,\"\n]{0,6}", any::<i64>(), proptest::option::of(-1e6..1e6f64))
        .prop_map(|(name, score, weight)| Row { name, score, weight });
    vec(row, 1..max)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Splice(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), any::<Index>(), 1..64usize).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match m {
        Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
        Mutation::Insert(at, new) => {
            let at = at.index(len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete(at, n) => {
            let at = at.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Splice(from, to, n) => {
            let (from, to) = (from.index(len), to.index(len));
            let n = (*n).min(len - from).min(len - to);
            let piece = bytes[from..from + n].to_vec();
            bytes[to..to + n].copy_from_slice(&piece);
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The records of a CSV (the header first), each without its line end.
fn csv_records(rows: &[Row]) -> Vec<String> {
    let mut out = vec!["name,score,weight".to_string()];
    out.extend(rows.iter().map(|r| {
        let weight = r.weight.map(|w| w.to_string()).unwrap_or_default();
        format!("{},{},{weight}", csv_field(&r.name), r.score)
    }));
    out
}

fn jsonl_lines(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| serde_json::json!({ "name": r.name, "score": r.score, "weight": r.weight }).to_string())
        .collect()
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("name", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()))) as ArrayRef),
        ("score", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.score))) as ArrayRef),
        ("weight", Arc::new(rows.iter().map(|r| r.weight).collect::<Float64Array>()) as ArrayRef),
    ])
    .unwrap()
}

fn parquet_bytes(rows: &[Row], group: usize) -> Vec<u8> {
    let b = batch(rows);
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(group.max(1)))
        .set_data_page_row_count_limit(16)
        .set_write_batch_size(16)
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), Some(props)).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    out
}

fn arrow_bytes(rows: &[Row], per_batch: usize) -> Vec<u8> {
    arrow_file(&batch(rows), per_batch)
}

/// [`read_as_good`] in `dir`, failing the case if a panic escapes the reader.
fn read_mutated(dir: &Path, format: Format, good: &[u8], bad: &[u8], batch: usize) -> Result<Read, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_as_good(dir, format, good, bad, batch)))
        .map_err(|p| TestCaseError::fail(format!("a panic escaped: {}", pipeline::panics::message(p.as_ref()))))?
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Records or lines as a text file: each followed by a line end.
fn join(records: &[String]) -> Vec<u8> {
    (records.join("\n") + "\n").into_bytes()
}

/// One property's scaffolding: a folder for the files of its cases, and how the cases went.
struct Fuzz {
    dir: tempfile::TempDir,
    tally: RefCell<Tally>,
}

/// Runs the property `case` on the cases of `strategy`, and prints how they went under `name`.
fn fuzz<S: Strategy>(name: &str, strategy: S, case: impl Fn(&Fuzz, S::Value) -> Result<(), TestCaseError>) {
    let fuzz = Fuzz { dir: tempfile::tempdir().unwrap(), tally: RefCell::default() };
    runner().run(&strategy, |value| case(&fuzz, value)).unwrap();
    fuzz.tally.borrow().print(name);
}

impl Fuzz {
    /// [`read_mutated`] in the property's folder, the read tallied.
    fn read(&self, format: Format, good: &[u8], bad: &[u8], batch: usize) -> Result<Read, TestCaseError> {
        let got = read_mutated(self.dir.path(), format, good, bad, batch)?;
        self.tally.borrow_mut().add(&got);
        Ok(got)
    }

    /// Reads `good` with `mutations` applied to its bytes: what was read, and the mutated bytes.
    fn read_mutations(
        &self,
        format: Format,
        good: &[u8],
        mutations: &[Mutation],
        batch: usize,
    ) -> Result<(Read, Vec<u8>), TestCaseError> {
        let mut bad = good.to_vec();
        mutations.iter().for_each(|m| mutate(&mut bad, m));
        Ok((self.read(format, good, &bad, batch)?, bad))
    }

    /// Reads the records `bad` (`good` with `rows` data records, some replaced by junk) with the
    /// schema of `good`: every row is read or rejected, and each reject is one row under one of
    /// the ids in `want`.
    fn junk_rejected_exactly(
        &self,
        format: Format,
        (good, bad): (&[String], &[String]),
        want: &BTreeSet<String>,
        rows: u64,
        batch: usize,
    ) -> Result<(), TestCaseError> {
        let got = self.read(format, &join(good), &join(bad), batch)?;
        check(accounted(&got) == rows && got.rows == rows, || {
            format!("{} accounted of {rows}: {got:?}", accounted(&got))
        })?;
        for (id, rows, _) in &got.rejects {
            check(*rows == 1 && want.contains(id), || format!("reject {id} is not one of {want:?}"))?;
        }
        Ok(())
    }
}

/// The data records the CSV grammar finds in `bytes` (after the header).
fn csv_data_records(bytes: &[u8]) -> u64 {
    let mut core = csv_core::Reader::new();
    let (mut out, mut ends) = (vec![0u8; 1 << 16], vec![0usize; 1 << 12]);
    let (mut input, mut records) = (bytes, 0u64);
    loop {
        let (result, read, _, _) = core.read_record(input, &mut out, &mut ends);
        input = &input[read..];
        match result {
            csv_core::ReadRecordResult::Record => records += 1,
            csv_core::ReadRecordResult::End => return records.saturating_sub(1),
            csv_core::ReadRecordResult::InputEmpty => {}
            _ => panic!("a generated field outgrew the test's buffers"),
        }
    }
}

/// How the cases of one property went, printed so a run shows the fuzzing bites.
#[derive(Default)]
struct Tally {
    cases: u32,
    with_rejects: u32,
    unknown: u32,
    caught: u32,
}

impl Tally {
    fn add(&mut self, got: &Read) {
        self.cases += 1;
        self.with_rejects += u32::from(!got.rejects.is_empty());
        self.unknown += u32::from(got.rejects.iter().any(|r| r.2.contains("unknown")));
        self.caught += u32::from(got.rejects.iter().any(|r| r.2.contains("decoder failed")));
    }

    fn print(&self, what: &str) {
        eprintln!(
            "{what}: {} cases, {} with rejects, {} with a count unknown, {} with a decoder panic caught",
            self.cases, self.with_rejects, self.unknown, self.caught
        );
    }
}

fn accounted(got: &Read) -> u64 {
    got.emitted() + got.rejected()
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok { Ok(()) } else { Err(TestCaseError::fail(what())) }
}

/// Junk for a whole record: never empty, never a line end; for CSV never a quote, for JSON never a
/// brace and never only whitespace, so it cannot turn into more or fewer rows.
fn junk(csv: bool) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..12).prop_map(move |mut bytes| {
        bytes.retain(|&b| {
            let special: &[u8] = if csv { b"\n\r\"" } else { b"\n\r{}" };
            !special.contains(&b)
        });
        if bytes.iter().all(|b| matches!(b, b' ' | b'\t')) {
            bytes.push(b'x');
        }
        bytes
    })
}

#[test]
fn csv_with_junk_records_rejects_exactly_those() {
    let strategy = (rows(300), vec((any::<Index>(), junk(true)), 1..6), 1..80usize);
    fuzz("csv_with_junk_records_rejects_exactly_those", strategy, |f, (rows, edits, batch)| {
        let good = csv_records(&rows);
        let mut bad = good.clone();
        let mut replaced = BTreeSet::new();
        for (at, bytes) in &edits {
            let i = 1 + at.index(rows.len());
            bad[i] = String::from_utf8_lossy(bytes).into_owned();
            replaced.insert(i);
        }
        // The line each record starts on, counting the newlines quoted inside fields.
        let mut line = 1u64;
        let mut lines = Vec::new();
        for r in &bad {
            lines.push(line);
            line += 1 + r.matches('\n').count() as u64;
        }
        let want: BTreeSet<String> = replaced.iter().map(|&i| format!("t.csv:{}", lines[i])).collect();
        f.junk_rejected_exactly(Format::Csv, (&good, &bad), &want, rows.len() as u64, batch)
    });
}

#[test]
fn csv_with_mutated_bytes_accounts_for_every_record() {
    let strategy = (rows(200), vec(mutation(), 1..4), 1..80usize);
    fuzz("csv_with_mutated_bytes_accounts_for_every_record", strategy, |f, (rows, mutations, batch)| {
        let (got, bad) = f.read_mutations(Format::Csv, &join(&csv_records(&rows)), &mutations, batch)?;
        let records = csv_data_records(&bad);
        let n = accounted(&got);
        check(n == records || n == records + 1, || format!("{n} accounted of {records} records: {got:?}"))
    });
}

#[test]
fn jsonl_with_junk_lines_rejects_exactly_those() {
    let strategy = (rows(300), vec((any::<Index>(), junk(false)), 1..6), 1..80usize);
    fuzz("jsonl_with_junk_lines_rejects_exactly_those", strategy, |f, (rows, edits, batch)| {
        let good = jsonl_lines(&rows);
        let mut bad = good.clone();
        let mut want = BTreeSet::new();
        for (at, bytes) in &edits {
            let i = at.index(rows.len());
            bad[i] = String::from_utf8_lossy(bytes).into_owned();
            want.insert(format!("t.jsonl:{}", i + 1));
        }
        f.junk_rejected_exactly(Format::Jsonl, (&good, &bad), &want, rows.len() as u64, batch)
    });
}

#[test]
fn jsonl_with_mutated_bytes_accounts_for_every_line() {
    let strategy = (rows(200), vec(mutation(), 1..4), 1..80usize);
    fuzz("jsonl_with_mutated_bytes_accounts_for_every_line", strategy, |f, (rows, mutations, batch)| {
        let (got, bad) = f.read_mutations(Format::Jsonl, &join(&jsonl_lines(&rows)), &mutations, batch)?;
        let lines = bad.split(|&b| b == b'\n').filter(|l| l.iter().any(|b| !b" \t\r".contains(b))).count() as u64;
        check(accounted(&got) >= lines, || format!("{} accounted of {lines} lines: {got:?}", accounted(&got)))
    });
}

/// Binary formats with mutated bytes: every row written is read or rejected, unless a reject says
/// the count is lost. `write(rows, n)` makes a file of `rows` in row groups or batches of `n`.
fn binary_with_mutated_bytes(name: &str, format: Format, write: fn(&[Row], usize) -> Vec<u8>) {
    let strategy = (rows(300), 1..120usize, vec(mutation(), 1..4), 1..80usize);
    fuzz(name, strategy, |f, (rows, n, mutations, batch)| {
        let (got, _) = f.read_mutations(format, &write(&rows, n), &mutations, batch)?;
        let written = rows.len() as u64;
        let unknown = got.rejects.iter().any(|(_, _, reason)| reason.contains("unknown"));
        check(unknown || accounted(&got) >= written, || {
            format!("{} accounted of {written}: {:?}", accounted(&got), got.rejects)
        })?;
        check(got.rejects.iter().all(|(_, _, r)| !r.contains("panicked")), || format!("{:?}", got.rejects))
    });
}

#[test]
fn parquet_with_mutated_bytes_accounts_for_every_row() {
    binary_with_mutated_bytes("parquet_with_mutated_bytes_accounts_for_every_row", Format::Parquet, parquet_bytes);
}

#[test]
fn arrow_with_mutated_bytes_accounts_for_every_row() {
    binary_with_mutated_bytes("arrow_with_mutated_bytes_accounts_for_every_row", Format::Arrow, arrow_bytes);
}

/// The unmutated files read back whole, so the properties above start from files that work.
#[test]
fn good_files_of_every_format_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row> = (0..150)
        .map(|i| Row { name: format!("r,\"{i}\"\n"), score: i, weight: (i % 3 > 0).then_some(i as f64) })
        .collect();
    for (format, bytes) in [
        (Format::Csv, join(&csv_records(&rows))),
        (Format::Jsonl, join(&jsonl_lines(&rows))),
        (Format::Parquet, parquet_bytes(&rows, 40)),
        (Format::Arrow, arrow_bytes(&rows, 40)),
    ] {
        let ext = format.extension();
        let got = read_mutated(dir.path(), format, &bytes, &bytes, 32).unwrap();
        assert!(got.rejects.is_empty(), "{ext}: {:?}", got.rejects);
        assert_eq!((got.emitted(), got.rows), (150, 150), "{ext}");
        let ids = got.ids();
        assert_eq!(ids.first().map(String::as_str), Some("0"), "{ext}");
        assert_eq!(ids.last().map(String::as_str), Some("149"), "{ext}");
    }
}
