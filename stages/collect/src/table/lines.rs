//! What the CSV and JSONL readers share: the loop that reads a file batch by batch with arrow's
//! decoder (the fast path) and reads a batch that fails again record by record (the slow path),
//! and the line numbers of byte offsets, counted only when a reject needs one: the fast path never
//! looks at line ends, and each byte is counted at most once.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};

use arrow::record_batch::RecordBatch;
use pipeline::Result;
use pipeline::panics::catch;

use super::read::FileContext;

/// One batch by arrow's decoder and the bytes it took; `None` at the end of the file. An error
/// (or a panic) sends the batch down the slow path.
pub(crate) type Fast = std::result::Result<Option<(RecordBatch, u64)>, String>;

/// The rows a batch read the slow way held, `None` at the end of the file, or the I/O error that
/// stopped it.
pub(crate) type Slow = Result<io::Result<Option<u64>>>;

/// A text file being read, and where its line ends are known up to.
pub(crate) struct TextFile {
    pub reader: BufReader<File>,
    pub lines: LineCounter,
}

/// A text format's two ways of reading a batch, for [`read_batches`].
pub(crate) trait TextBatches {
    /// Reads one batch with arrow's decoder.
    fn fast(&mut self, reader: &mut BufReader<File>) -> Fast;

    /// Reads the batch at the reader's position (the line `file.lines` knows; the file's row
    /// `first`) record by record, emitting the good records and rejecting each bad one under its
    /// line; the next batch is read with a fresh decoder.
    fn slow(&mut self, file: &mut TextFile, first: u64, cx: &mut FileContext) -> Slow;
}

/// Reads the rest of a text file batch by batch, from byte `offset` (where `file.lines` stands)
/// on, the file's `rows` rows before it already read: each batch the fast way, and a batch that
/// fails (or does not convert whole) again the slow way. Returns the file's rows, read or rejected.
pub(crate) fn read_batches(
    format: &mut impl TextBatches,
    mut file: TextFile,
    mut offset: u64,
    mut rows: u64,
    cx: &mut FileContext,
) -> Result<u64> {
    loop {
        // A decoder that panics on the batch's bytes sends it down the slow path, like an error.
        let batch = catch(|| format.fast(&mut file.reader)).unwrap_or_else(Err);
        let fast = match batch {
            Ok(None) => return Ok(rows),
            Ok(Some((batch, bytes))) => match cx.convert(&batch, rows) {
                Ok((out, failed)) if failed.is_empty() => Some((out, bytes)),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some((out, bytes)) = fast {
            rows += out.num_rows() as u64;
            offset += bytes;
            cx.emit(out)?;
            continue;
        }
        let slow = match file.lines.seek_to(&mut file.reader, offset) {
            Ok(_) => format.slow(&mut file, rows, cx)?,
            Err(e) => Err(e),
        };
        match slow {
            Ok(None) => return Ok(rows),
            Ok(Some(read)) => {
                rows += read;
                offset = file.lines.position().0;
            }
            Err(e) => {
                let reason = format!("cannot read the file after {rows} rows, the rest is not read: {e}");
                return cx.reject(cx.name, 1, reason).map(|_| rows);
            }
        }
    }
}

/// The line (from 1) at a known offset; moves forward as rejects ask for later offsets.
pub(crate) struct LineCounter {
    offset: u64,
    line: u64,
}

impl LineCounter {
    /// The line at offset `offset`, known by the caller (the end of a CSV header, say).
    pub fn new(offset: u64, line: u64) -> Self {
        LineCounter { offset, line }
    }

    /// Moves `reader` to `offset` (at or after the last known one) and returns the line there,
    /// counting the line ends in between.
    pub fn seek_to<R: BufRead + Seek>(&mut self, reader: &mut R, offset: u64) -> io::Result<u64> {
        reader.seek(SeekFrom::Start(self.offset))?;
        while self.offset < offset {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file got shorter while it was read"));
            }
            let n = buf.len().min((offset - self.offset) as usize);
            self.line += count_newlines(&buf[..n]);
            self.offset += n as u64;
            reader.consume(n);
        }
        Ok(self.line)
    }

    /// Records that `bytes` were read from the current offset on.
    pub fn advance(&mut self, bytes: &[u8]) {
        self.line += count_newlines(bytes);
        self.offset += bytes.len() as u64;
    }

    /// The offset and line last known.
    pub fn position(&self) -> (u64, u64) {
        (self.offset, self.line)
    }
}

/// The line ends in `bytes`.
pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn lines_are_counted_forward_from_the_last_known_offset() {
        let text = b"h\na\nb\n\"c\nd\"\ne\n";
        let mut r = Cursor::new(&text[..]);
        let mut lines = LineCounter::new(2, 2);
        assert_eq!(lines.seek_to(&mut r, 2).unwrap(), 2);
        assert_eq!(lines.seek_to(&mut r, 6).unwrap(), 4);
        assert_eq!(r.position(), 6);
        assert_eq!(lines.seek_to(&mut r, text.len() as u64).unwrap(), 7);
        assert!(lines.seek_to(&mut r, 100).is_err(), "past the end");
    }
}
