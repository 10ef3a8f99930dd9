//! Line numbers of byte offsets in a text file, counted only when a reject needs one: the fast path
//! of the CSV and JSONL readers never looks at line ends, and each byte is counted at most once.

use std::io::{self, BufRead, Seek, SeekFrom};

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
