//! CSV: arrow's decoder reads batch after batch; when a batch fails (a ragged row, a value of the
//! wrong type, bytes that are not UTF-8), that batch's records are split again one by one from the
//! batch's first byte, so only the bad records are rejected, each under `file:line` (the line the
//! record starts on; the header is line 1), and reading goes on with the next batch. Records are
//! numbered by their position among the file's data records, rejected or not.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor};
use std::path::Path;

use arrow::csv::reader::Decoder;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use csv_core::ReadRecordResult;
use pipeline::panics::catch;
use pipeline::{Error, Result};

use super::INFER_ROWS;
use super::lines::{Fast, LineCounter, Slow, TextBatches, TextFile, count_newlines, read_batches};
use super::read::{FileContext, Format, arrow_message, decoder_failed};

/// The schema of a CSV file from its header and the first rows that fit it (types inferred).
pub(crate) fn schema(path: &Path, name: &str) -> Result<Schema> {
    let bad = |message: String| Error::config("path", format!("{name}: {message}"));
    let mut reader = BufReader::new(File::open(path).map_err(|e| bad(e.to_string()))?);
    let mut split = Splitter::default();
    let mut sample = Vec::new();
    let Some(columns) = split.next(&mut reader, &mut sample).map_err(|e| bad(e.to_string()))? else {
        return Err(bad(if sample.is_empty() {
            "the file is empty (0 bytes): a CSV file starts with a header line".to_string()
        } else {
            "the file has no header line".to_string()
        }));
    };
    // Rows that cannot be read are left out of the sample: they are rejected when read.
    let mut raw = Vec::new();
    let mut rows = 0;
    while rows < INFER_ROWS {
        raw.clear();
        match split.next(&mut reader, &mut raw) {
            Ok(Some(n)) if n == columns && std::str::from_utf8(&raw).is_ok() => {
                sample.extend_from_slice(trim_start(&raw));
                rows += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let format = arrow::csv::reader::Format::default().with_header(true);
    Ok(format.infer_schema(Cursor::new(sample), None).map_err(|e| bad(e.to_string()))?.0)
}

/// Reads a CSV file with the first file's schema; returns its data records (read or rejected).
pub(crate) fn read(path: &Path, cx: &mut FileContext) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return cx.reject(cx.name, 1, format!("cannot open the file: {e}")).map(|_| 0),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut split = Splitter::default();
    let mut header = Vec::new();
    let columns = cx.shape.read_schema.fields().len();
    let mut rows = 0u64;
    match split.next(&mut reader, &mut header) {
        Err(e) => return cx.reject(cx.name, 1, format!("cannot read the file: {e}")).map(|_| 0),
        Ok(None) if header.is_empty() => {
            return cx.reject(cx.name, 0, "the file is empty (0 bytes): no header line, no rows").map(|_| 0);
        }
        Ok(None) => return cx.reject(cx.name, 0, "the file has no header line, no rows").map(|_| 0),
        // A header that does not fit is most likely a header run into the first row.
        Ok(Some(n)) if n != columns => {
            let line = 1 + count_newlines(&header[..header.len() - trim_start(&header).len()]);
            let reason = format!("the header line has {} where the first file's header has {columns}", fields(n));
            cx.reject(cx.line_id(line), 1, reason)?;
            rows = 1;
        }
        Ok(Some(_)) => {}
    }
    let file = TextFile { reader, lines: LineCounter::new(header.len() as u64, 1 + count_newlines(&header)) };
    let mut batches = CsvBatches { decoder: new_decoder(&cx.shape.read_schema, cx.batch_size, None), split };
    read_batches(&mut batches, file, header.len() as u64, rows, cx)
}

/// The decoder of the fast path and the splitter of the slow one.
struct CsvBatches {
    decoder: Decoder,
    split: Splitter,
}

impl TextBatches for CsvBatches {
    fn fast(&mut self, reader: &mut BufReader<File>) -> Fast {
        let mut bytes = 0u64;
        loop {
            let buf = reader.fill_buf().map_err(|e| e.to_string())?;
            let n = self.decoder.decode(buf).map_err(|e| e.to_string())?;
            reader.consume(n);
            bytes += n as u64;
            if n == 0 || self.decoder.capacity() == 0 {
                break;
            }
        }
        Ok(self.decoder.flush().map_err(|e| e.to_string())?.map(|b| (b, bytes)))
    }

    /// Good records are emitted together; returns the records read.
    fn slow(&mut self, file: &mut TextFile, first: u64, cx: &mut FileContext) -> Slow {
        let TextFile { reader, lines } = file;
        let mut line = lines.position().1;
        let split = &mut self.split;
        *split = Splitter::default();
        self.decoder = new_decoder(&cx.shape.read_schema, cx.batch_size, None);
        let mut good: Vec<RecordBatch> = Vec::new();
        let mut raw = Vec::new();
        let mut records = 0u64;
        while records < cx.batch_size as u64 {
            raw.clear();
            let fields = match split.next(reader, &mut raw) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Ok(Err(e)),
            };
            lines.advance(&raw);
            let record = trim_start(&raw);
            let start_line = line + count_newlines(&raw[..raw.len() - record.len()]);
            line = lines.position().1;
            let decoded = catch(|| decode_one(record, fields, split, first + records, cx));
            match decoded.unwrap_or_else(|p| Err(decoder_failed(Format::Csv, &p))) {
                Ok(batch) => good.push(batch),
                Err(reason) => cx.reject(cx.line_id(start_line), 1, reason)?,
            }
            records += 1;
        }
        cx.emit(arrow::compute::concat_batches(&cx.shape.schema, &good)?)?;
        Ok(Ok((records > 0).then_some(records)))
    }
}

fn new_decoder(schema: &SchemaRef, batch_size: usize, projection: Option<Vec<usize>>) -> Decoder {
    let builder = arrow::csv::ReaderBuilder::new(schema.clone()).with_header(false).with_batch_size(batch_size);
    match projection {
        Some(p) => builder.with_projection(p),
        None => builder,
    }
    .build_decoder()
}

/// Decodes and converts one record (the file's row `row`), or says why it cannot be.
fn decode_one(
    record: &[u8],
    fields: usize,
    split: &Splitter,
    row: u64,
    cx: &FileContext,
) -> std::result::Result<RecordBatch, String> {
    let schema = &cx.shape.read_schema;
    let columns = schema.fields().len();
    if fields != columns {
        return Err(format!("{} where the header has {columns}", self::fields(fields)));
    }
    if std::str::from_utf8(record).is_err() {
        let bad = (0..fields).find(|&i| std::str::from_utf8(split.field(i)).is_err()).unwrap_or(0);
        return Err(format!("field {} (`{}`) is not UTF-8 text", bad + 1, schema.field(bad).name()));
    }
    let batch = match decode_record(record, schema, None) {
        Ok(batch) => batch,
        Err(e) => {
            // Decoding one column at a time finds the value at fault.
            let bad = (0..columns).find(|&j| decode_record(record, schema, Some(vec![j])).is_err());
            return Err(match bad {
                Some(j) => {
                    let value = String::from_utf8_lossy(split.field(j));
                    format!("column `{}`: {value:?} is not {}", schema.field(j).name(), schema.field(j).data_type())
                }
                None => e,
            });
        }
    };
    let (out, failed) = cx.convert(&batch, row)?;
    match failed.into_iter().next() {
        Some((_, reason)) => Err(reason),
        None => Ok(out),
    }
}

fn decode_record(
    record: &[u8],
    schema: &SchemaRef,
    projection: Option<Vec<usize>>,
) -> std::result::Result<RecordBatch, String> {
    let mut decoder = new_decoder(schema, 1, projection);
    let s = arrow_message;
    decoder.decode(record).map_err(s)?;
    decoder.decode(&[]).map_err(s)?;
    decoder.flush().map_err(s)?.ok_or_else(|| "no record".to_string())
}

fn fields(n: usize) -> String {
    if n == 1 { "1 field".to_string() } else { format!("{n} fields") }
}

/// A record without the empty lines the CSV parser skipped before it.
fn trim_start(raw: &[u8]) -> &[u8] {
    let lead = raw.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    &raw[lead..]
}

/// Splits CSV records as arrow's decoder does (csv-core with the same defaults), keeping each
/// record's raw bytes, so a record can be located and decoded alone.
struct Splitter {
    core: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    fields: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter { core: csv_core::Reader::new(), out: vec![0; 1024], ends: vec![0; 64], fields: 0 }
    }
}

impl Splitter {
    /// Reads the next record, appending its raw bytes (with the empty lines before it and its line
    /// end) to `raw`; returns its field count, or `None` at the end of the input.
    fn next(&mut self, src: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let (mut out_len, mut ends_len) = (0, 0);
        loop {
            let input = src.fill_buf()?;
            let (result, read, written, ended) =
                self.core.read_record(input, &mut self.out[out_len..], &mut self.ends[ends_len..]);
            raw.extend_from_slice(&input[..read]);
            src.consume(read);
            out_len += written;
            ends_len += ended;
            match result {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => self.out.resize(self.out.len() * 2, 0),
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    self.fields = ends_len;
                    return Ok(Some(ends_len));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// The unescaped bytes of field `i` of the last record.
    fn field(&self, i: usize) -> &[u8] {
        if i >= self.fields {
            return &[];
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::testing::{Read, read_as_good, text_file};
    use super::*;

    /// A CSV of `rows` rows `r{i},{i},"note {i}"`, with `edit` applied to the data row `i` (from 1).
    fn table(rows: usize, edit: impl Fn(usize, String) -> String) -> Vec<u8> {
        text_file("name,score,note\n", rows, |i| edit(i, format!("r{i},{i},note {i}")))
    }

    fn read_csv(bytes: &[u8], batch: usize) -> Read {
        let dir = tempfile::tempdir().unwrap();
        read_as_good(dir.path(), Format::Csv, &table(5, |_, r| r), bytes, batch).unwrap()
    }

    #[test]
    fn a_ragged_row_costs_that_row_only_and_keeps_the_ids_around_it() {
        let got = read_csv(&table(3000, |i, r| if i == 2003 { "r2003,2003".into() } else { r }), 64);
        assert_eq!(got.rejects, [("t.csv:2004".to_string(), 1, "2 fields where the header has 3".to_string())]);
        assert_eq!((got.emitted(), got.rows), (2999, 3000));
        let ids = got.ids();
        assert_eq!((ids[2001].as_str(), ids[2002].as_str()), ("2001", "2003"), "row 2003 keeps its number");
    }

    #[test]
    fn a_bad_value_names_its_column_and_line() {
        let got = read_csv(&table(3000, |i, r| if i == 2501 { "r2501,many,x".into() } else { r }), 64);
        let reason = "column `score`: \"many\" is not Int64".to_string();
        assert_eq!(got.rejects, [("t.csv:2502".to_string(), 1, reason)]);
        assert_eq!(got.emitted(), 2999);
    }

    #[test]
    fn lines_count_quoted_newlines_and_blank_lines() {
        let text = table(200, |i, r| match i {
            10 => "r10,10,\"two\nlines\"".into(),
            20 => format!("\n\n{r}"),
            150 => "r150,x,\"a\nb\"".into(),
            _ => r,
        });
        let got = read_csv(&text, 16);
        // Row 150 starts on line 151, plus one for the quoted newline of row 10 and two blank lines.
        assert_eq!(got.rejects[0].0, "t.csv:154");
        assert_eq!((got.emitted(), got.rows), (199, 200));
    }

    #[test]
    fn bytes_that_are_not_utf8_cost_their_row() {
        let mut text = table(100, |i, r| if i == 40 { "r40,40,caf\u{e9}".into() } else { r });
        let at = text.windows(5).position(|w| w == "caf\u{e9}".as_bytes()).unwrap() + 3;
        text.splice(at..at + 2, [0xe9]);
        let got = read_csv(&text, 64);
        assert_eq!(got.rejects, [("t.csv:41".to_string(), 1, "field 3 (`note`) is not UTF-8 text".to_string())]);
        assert_eq!(got.emitted(), 99);
    }

    #[test]
    fn an_empty_file_and_a_header_run_into_a_row_are_reported() {
        let empty = read_csv(b"", 64);
        assert_eq!(
            empty.rejects,
            [("t.csv".to_string(), 0, "the file is empty (0 bytes): no header line, no rows".to_string())]
        );
        let merged = read_csv(b"name,score,noter1,1,a\nr2,2,b\n", 64);
        assert_eq!(merged.rejects[0].0, "t.csv:1");
        assert_eq!((merged.emitted(), merged.rejected()), (1, 1));
    }

    fn records(text: &str) -> Vec<(usize, String)> {
        let mut split = Splitter::default();
        let mut src = Cursor::new(text.as_bytes());
        let mut out = Vec::new();
        let mut raw = Vec::new();
        while let Some(n) = split.next(&mut src, &mut raw).unwrap() {
            out.push((n, String::from_utf8(trim_start(&raw).to_vec()).unwrap()));
            raw.clear();
        }
        out
    }

    #[test]
    fn records_keep_their_raw_bytes_across_quoted_newlines_and_blank_lines() {
        let got = records("a,b\n1,\"x\ny\"\n\n\n2,z\r\n3,w");
        let want = [(2, "a,b\n"), (2, "1,\"x\ny\"\n"), (2, "2,z\r"), (2, "3,w")];
        assert_eq!(got, want.map(|(n, s)| (n, s.to_string())));
    }

    #[test]
    fn a_field_past_the_last_is_empty() {
        let mut split = Splitter::default();
        split.next(&mut Cursor::new(b"ab,\"c\"\"d\"\n"), &mut Vec::new()).unwrap();
        assert_eq!((split.field(0), split.field(1), split.field(2)), (&b"ab"[..], &b"c\"d"[..], &b""[..]));
    }
}
