//! JSONL: arrow's decoder reads batch after batch with the first file's schema; when a batch fails
//! (a broken line, a value of the wrong type, bytes that are not UTF-8), that batch is read again
//! line by line from its first byte, so each bad line is rejected alone under `file:line`, and
//! reading goes on with the next batch. Rows are numbered by their position in the file: a rejected
//! line takes one number, a blank line none.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;
use pipeline::panics::catch;
use pipeline::{Error, Result};

use super::INFER_ROWS;
use super::lines::{Fast, LineCounter, Slow, TextBatches, TextFile, count_newlines, read_batches};
use super::read::{FileContext, Format, arrow_message, decoder_failed};

/// The schema of a JSONL file, inferred from its first lines that are JSON objects.
pub(crate) fn schema(path: &Path, name: &str) -> Result<Schema> {
    let bad = |message: String| Error::config("path", format!("{name}: {message}"));
    let mut reader = BufReader::new(File::open(path).map_err(|e| bad(e.to_string()))?);
    let mut values = Vec::new();
    let mut line = Vec::new();
    let mut bytes = 0;
    while values.len() < INFER_ROWS {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(n) => bytes += n,
            Err(e) => return Err(bad(e.to_string())),
        }
        // Lines that are not objects are left out of the sample: they are rejected when read.
        if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_slice(&line) {
            values.push(value);
        }
    }
    if values.is_empty() {
        return Err(bad(if bytes == 0 {
            "the file is empty (0 bytes): the schema comes from the first file's rows".to_string()
        } else {
            format!("none of its first {INFER_ROWS} lines is a JSON object, so it has no schema")
        }));
    }
    arrow::json::reader::infer_json_schema_from_iterator(values.into_iter().map(Ok)).map_err(|e| bad(e.to_string()))
}

/// Reads a JSONL file with the first file's schema; returns its rows (read or rejected).
pub(crate) fn read(path: &Path, cx: &mut FileContext) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return cx.reject(cx.name, 1, format!("cannot open the file: {e}")).map(|_| 0),
    };
    let file = TextFile { reader: BufReader::with_capacity(1 << 16, file), lines: LineCounter::new(0, 1) };
    let mut batches = JsonlBatches { decoder: new_decoder(&cx.shape.read_schema, cx.batch_size)? };
    read_batches(&mut batches, file, 0, 0, cx)
}

/// The decoder of the fast path.
struct JsonlBatches {
    decoder: Decoder,
}

impl TextBatches for JsonlBatches {
    /// A batch with fewer rows than line ends has a value spanning lines (or blank lines): it is
    /// read again line by line, since in JSONL a line is a row.
    fn fast(&mut self, reader: &mut BufReader<File>) -> Fast {
        let (mut bytes, mut newlines) = (0u64, 0u64);
        loop {
            let buf = reader.fill_buf().map_err(|e| e.to_string())?;
            if buf.is_empty() {
                break;
            }
            let len = buf.len();
            let n = self.decoder.decode(buf).map_err(|e| e.to_string())?;
            newlines += count_newlines(&buf[..n]);
            reader.consume(n);
            bytes += n as u64;
            if n != len {
                break;
            }
        }
        if self.decoder.has_partial_record() {
            return Err("the file ends inside a value".to_string());
        }
        match self.decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) if (batch.num_rows() as u64) < newlines => Err("a value spans lines".to_string()),
            batch => Ok(batch.map(|b| (b, bytes))),
        }
    }

    /// Good lines are emitted together; returns the rows read.
    fn slow(&mut self, file: &mut TextFile, first: u64, cx: &mut FileContext) -> Slow {
        let TextFile { reader, lines } = file;
        let mut line = lines.position().1;
        self.decoder = new_decoder(&cx.shape.read_schema, cx.batch_size)?;
        let mut good: Vec<RecordBatch> = Vec::new();
        let (mut raw, mut rows, mut seen) = (Vec::new(), 0u64, 0usize);
        while seen < cx.batch_size {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) if seen == 0 => return Ok(Ok(None)),
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
            lines.advance(&raw);
            let this = line;
            line = lines.position().1;
            if raw.iter().all(|&b| is_json_space(b)) {
                continue;
            }
            seen += 1;
            let decoded = catch(|| decode_line(&raw, first + rows, cx));
            match decoded.unwrap_or_else(|p| Err(decoder_failed(Format::Jsonl, &p))) {
                Ok(batch) => {
                    rows += batch.num_rows() as u64;
                    good.push(batch);
                }
                Err(reason) => {
                    cx.reject(cx.line_id(this), 1, reason)?;
                    rows += 1;
                }
            }
        }
        cx.emit(arrow::compute::concat_batches(&cx.shape.schema, &good)?)?;
        Ok(Ok(Some(rows)))
    }
}

/// A decoder with the first file's schema; where inference made a column text because its values
/// were of mixed kinds, numbers and booleans in it are read as their text.
fn new_decoder(schema: &SchemaRef, batch_size: usize) -> Result<Decoder> {
    let builder =
        arrow::json::ReaderBuilder::new(schema.clone()).with_batch_size(batch_size).with_coerce_primitive(true);
    Ok(builder.build_decoder()?)
}

/// JSON's whitespace, as arrow's decoder skips it between values.
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Decodes and converts one line (whose first row is the file's row `row`), or says why not.
fn decode_line(line: &[u8], row: u64, cx: &FileContext) -> std::result::Result<RecordBatch, String> {
    if std::str::from_utf8(line).is_err() {
        return Err("the line is not UTF-8 text".to_string());
    }
    let mut decoder = new_decoder(&cx.shape.read_schema, line.len().max(1)).map_err(|e| e.to_string())?;
    decoder.decode(line).map_err(|e| format!("not valid JSON: {}", arrow_message(e)))?;
    if decoder.has_partial_record() {
        return Err("not valid JSON: the line ends inside a value".to_string());
    }
    let batch = match decoder.flush() {
        Ok(Some(batch)) => batch,
        Ok(None) => return Err("no JSON value".to_string()),
        Err(e) => return Err(format!("does not fit the first file's schema: {}", arrow_message(e))),
    };
    let (out, failed) = cx.convert(&batch, row)?;
    match failed.into_iter().next() {
        Some((_, reason)) => Err(reason),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::testing::{Read, read_as_good, text_file};
    use super::*;

    fn table(rows: usize, edit: impl Fn(usize, String) -> String) -> Vec<u8> {
        text_file("", rows, |i| edit(i, format!("{{\"name\": \"r{i}\", \"score\": {i}}}")))
    }

    fn read_jsonl(bytes: &[u8], batch: usize) -> Read {
        let dir = tempfile::tempdir().unwrap();
        read_as_good(dir.path(), Format::Jsonl, &table(5, |_, r| r), bytes, batch).unwrap()
    }

    #[test]
    fn a_broken_line_costs_that_line_only_and_names_it() {
        let got = read_jsonl(&table(3000, |i, r| if i == 2002 { r[..14].to_string() } else { r }), 64);
        assert_eq!(got.rejects.len(), 1, "{:?}", got.rejects);
        assert_eq!(got.rejects[0].0, "t.jsonl:2002");
        assert!(got.rejects[0].2.starts_with("not valid JSON"), "{}", got.rejects[0].2);
        assert_eq!((got.emitted(), got.rows), (2999, 3000));
        let ids = got.ids();
        assert_eq!((ids[2000].as_str(), ids[2001].as_str()), ("2000", "2002"), "the broken line keeps its number");
    }

    #[test]
    fn a_value_of_the_wrong_type_and_bytes_that_are_not_utf8_cost_their_lines() {
        let mut text = table(300, |i, r| match i {
            7 => "{\"name\": \"r7\", \"score\": \"many\"}".to_string(),
            200 => "{\"name\": \"r\u{e9}\", \"score\": 200}".to_string(),
            _ => r,
        });
        let at = text.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
        text.splice(at..at + 2, [0xe9]);
        let got = read_jsonl(&text, 64);
        let ids: Vec<&str> = got.rejects.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(ids, ["t.jsonl:7", "t.jsonl:200"], "{:?}", got.rejects);
        assert_eq!(got.rejects[1].2, "the line is not UTF-8 text");
        assert_eq!((got.emitted(), got.rejected()), (298, 2));
    }

    #[test]
    fn blank_lines_are_no_rows_and_a_truncated_last_line_is_rejected() {
        let mut text = table(10, |i, r| if i == 5 { format!("\n  \n{r}") } else { r });
        text.truncate(text.len() - 5);
        let got = read_jsonl(&text, 4);
        assert_eq!(got.rejects.len(), 1, "{:?}", got.rejects);
        assert_eq!(got.rejects[0].0, "t.jsonl:12");
        assert_eq!((got.emitted(), got.rows), (9, 10));
    }
}
