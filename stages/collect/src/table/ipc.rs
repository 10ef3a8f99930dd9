//! Arrow IPC files: the footer lists the record batches, so each is read on its own and a corrupt
//! one is skipped; its rows are counted from its message header when that can still be read, and
//! the reject says the count is unknown when it cannot. Every block is checked against the file's
//! size before its bytes are read, and decoding runs inside [`pipeline::panics::catch`]. Rows are
//! numbered by their position in the file (from 0).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::{Block, MetadataVersion};
use pipeline::panics::catch;
use pipeline::{Error, Result};

use super::read::{FileContext, Format, decoder_failed};

/// The magic bytes an Arrow IPC file starts with, padded to 8, and the trailer it ends with.
const HEAD: u64 = 8;
const TAIL: u64 = 10;

/// What the footer of an Arrow IPC file says.
struct Footer {
    schema: SchemaRef,
    version: MetadataVersion,
    dictionaries: Vec<Block>,
    batches: Vec<Block>,
    /// Where the footer starts: every block must end before it.
    start: u64,
}

/// The schema of an Arrow IPC file, from its footer.
pub(crate) fn schema(path: &Path, name: &str) -> Result<Schema> {
    let bad = |message: String| Error::config("path", format!("{name}: {message}"));
    let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let footer = read_footer(&mut file).map_err(bad)?;
    Ok(footer.schema.as_ref().clone())
}

fn read_footer(file: &mut File) -> std::result::Result<Footer, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Err("the file is empty (0 bytes), so it is not an Arrow IPC file".to_string());
    }
    if len < HEAD + TAIL {
        return Err(format!("the file is {len} bytes, too short for an Arrow IPC file"));
    }
    let mut tail = [0u8; TAIL as usize];
    file.seek(SeekFrom::Start(len - TAIL)).and_then(|_| file.read_exact(&mut tail)).map_err(|e| e.to_string())?;
    let footer_len =
        read_footer_length(tail).map_err(|_| "it has no Arrow IPC footer (truncated?)".to_string())? as u64;
    if footer_len > len - HEAD - TAIL {
        return Err(format!("its footer length ({footer_len} bytes) does not fit in the file ({len} bytes)"));
    }
    let start = len - TAIL - footer_len;
    let bytes = read_at(file, start, footer_len as usize).map_err(|e| e.to_string())?;
    let parsed = catch(|| -> std::result::Result<Footer, String> {
        let footer = arrow::ipc::root_as_footer(&bytes).map_err(|e| format!("its footer is corrupt: {e}"))?;
        let schema = footer.schema().ok_or("its footer has no schema")?;
        let schema = arrow::ipc::convert::try_fb_to_schema(schema).map_err(|e| e.to_string())?;
        Ok(Footer {
            schema: Arc::new(schema),
            version: footer.version(),
            dictionaries: footer.dictionaries().map(|d| d.iter().copied().collect()).unwrap_or_default(),
            batches: footer
                .recordBatches()
                .ok_or("its footer has no list of record batches")?
                .iter()
                .copied()
                .collect(),
            start,
        })
    });
    parsed.unwrap_or_else(|panic| Err(decoder_failed(Format::Arrow, &panic)))
}

fn read_at(file: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads an Arrow IPC file; returns its rows (read or rejected), as far as it says.
pub(crate) fn read(path: &Path, cx: &mut FileContext) -> Result<u64> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return cx.reject(cx.name, 1, format!("cannot open the file: {e}")).map(|_| 0),
    };
    let footer = match read_footer(&mut file) {
        Ok(footer) => footer,
        Err(e) => {
            let reason = format!("cannot read the file, so its row count is unknown: {e}");
            return cx.reject(cx.name, 1, reason).map(|_| 0);
        }
    };
    let mut decoder = FileDecoder::new(footer.schema.clone(), footer.version);
    // A dictionary that cannot be read fails the batches that use it, each counted below.
    for block in &footer.dictionaries {
        if let Ok(buf) = read_block(&mut file, block, footer.start) {
            let _ = catch(|| decoder.read_dictionary(block, &buf));
        }
    }
    let unlisted = unlisted_bytes(&mut file, &footer);
    if unlisted > 0 {
        let reason = format!(
            "{unlisted} bytes of the file are in no block its footer lists (a corrupt footer?): \
             rows there are not read and their count is unknown"
        );
        cx.reject(cx.name, 1, reason)?;
    }
    let total = footer.batches.len();
    let mut first = 0u64;
    for (i, block) in footer.batches.iter().enumerate() {
        let buf = read_block(&mut file, block, footer.start);
        let decoded = match &buf {
            Ok(buf) => catch(|| match decoder.read_record_batch(block, buf) {
                Ok(Some(batch)) => Ok(batch),
                Ok(None) => Err("its message is not a record batch".to_string()),
                Err(e) => Err(e.to_string()),
            })
            .unwrap_or_else(|panic| Err(decoder_failed(Format::Arrow, &panic))),
            Err(e) => Err(e.clone()),
        };
        match decoded {
            Ok(batch) => {
                cx.convert_and_emit(&batch, first)?;
                first += batch.num_rows() as u64;
            }
            Err(cause) => {
                let at = format!("record batch {} of {total} is corrupt", i + 1);
                let header = match &buf {
                    Ok(buf) => rows_of(buf.as_slice(), &footer.schema),
                    // The body may be cut off while the message header is still there.
                    Err(_) => usize::try_from(block.metaDataLength())
                        .ok()
                        .filter(|&n| (block.offset() as u64).saturating_add(n as u64) <= footer.start)
                        .and_then(|n| read_at(&mut file, block.offset() as u64, n).ok())
                        .and_then(|meta| rows_of(&meta, &footer.schema)),
                };
                match header {
                    Some(rows) => {
                        let reason = format!(
                            "{at}, {rows} rows not read (rows {first}-{} of the file): {cause}",
                            first + rows.max(1) - 1
                        );
                        cx.reject(cx.name, rows, reason)?;
                        first += rows;
                    }
                    None => cx.reject(
                        cx.name,
                        1,
                        format!("{at}, its rows are not read and their count is unknown: {cause}"),
                    )?,
                }
            }
        }
    }
    Ok(first)
}

/// The bytes between the schema message and the footer that no listed block covers, other than
/// alignment padding (zeros, less than 64 bytes) and the end-of-stream marker: a footer that lost
/// blocks (a list cut short, a field gone) would otherwise lose their rows without a word.
fn unlisted_bytes(file: &mut File, footer: &Footer) -> u64 {
    // The schema message follows the magic, after zeros up to its alignment.
    let head = read_at(file, HEAD, 64.min(footer.start.saturating_sub(HEAD)) as usize).unwrap_or_default();
    let schema_end =
        (0..head.len().saturating_sub(7)).step_by(8).find(|&i| head[i..i + 4] == [0xff; 4]).map_or(HEAD, |i| {
            HEAD + i as u64 + 8 + u64::from(u32::from_le_bytes([head[i + 4], head[i + 5], head[i + 6], head[i + 7]]))
        });
    let end = footer.start.saturating_sub(8);
    let mut spans: Vec<(u64, u64)> = footer
        .dictionaries
        .iter()
        .chain(&footer.batches)
        .filter(|b| b.offset() >= 0 && b.metaDataLength() >= 0 && b.bodyLength() >= 0)
        .map(|b| {
            let from = b.offset() as u64;
            (from, from.saturating_add(b.metaDataLength() as u64).saturating_add(b.bodyLength() as u64))
        })
        .collect();
    spans.sort();
    spans.push((end, end));
    let (mut at, mut unlisted) = (schema_end, 0u64);
    for (from, to) in spans {
        let gap = from.min(end).saturating_sub(at);
        let mut padding = || gap < 64 && read_at(file, at, gap as usize).is_ok_and(|b| b.iter().all(|&x| x == 0));
        if gap > 0 && !padding() {
            unlisted += gap;
        }
        at = at.max(to);
    }
    unlisted
}

/// The bytes of a block (message and body), once it is known to lie inside the file.
fn read_block(file: &mut File, block: &Block, end: u64) -> std::result::Result<Buffer, String> {
    let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
    let fits = offset >= HEAD as i64
        && meta >= 8
        && body >= 0
        && (offset as u64).checked_add(meta as u64).and_then(|n| n.checked_add(body as u64)).is_some_and(|n| n <= end);
    if !fits {
        return Err(format!(
            "the footer places it at bytes {offset}+{meta}+{body}, outside the file's {end} bytes of data"
        ));
    }
    let bytes = read_at(file, offset as u64, meta as usize + body as usize).map_err(|e| e.to_string())?;
    Ok(Buffer::from_vec(bytes))
}

/// The row count a block's message header gives, when it can be read and agrees with itself: the
/// batch's length is that of every top-level column node, and there are as many nodes as the
/// schema has fields and children. A header that fails this is as corrupt as the body.
fn rows_of(bytes: &[u8], schema: &Schema) -> Option<u64> {
    let message = if bytes.get(..4)? == [0xff; 4] { bytes.get(8..)? } else { bytes.get(4..)? };
    catch(|| {
        let batch = arrow::ipc::root_as_message(message).ok()?.header_as_record_batch()?;
        let (length, nodes) = (batch.length(), batch.nodes()?);
        let mut at = 0;
        for field in schema.fields() {
            if at >= nodes.len() || nodes.get(at).length() != length {
                return None;
            }
            at += nodes_of(field.data_type())?;
        }
        (length > 0 && at == nodes.len()).then_some(length as u64)
    })
    .ok()
    .flatten()
}

/// The field nodes a column of type `t` has in a record batch message; `None` for a type this
/// count does not cover.
fn nodes_of(t: &DataType) -> Option<usize> {
    Some(match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => 1 + nodes_of(f.data_type())?,
        DataType::Struct(fields) => 1 + fields.iter().map(|f| nodes_of(f.data_type())).sum::<Option<usize>>()?,
        DataType::Union(..) | DataType::RunEndEncoded(..) => return None,
        _ => 1,
    })
}

/// Where each record batch of an Arrow IPC file lies: (offset, message length, body length).
#[cfg(test)]
pub(crate) fn batch_blocks(path: &Path) -> Vec<(u64, u64, u64)> {
    let footer = read_footer(&mut File::open(path).unwrap()).unwrap();
    footer.batches.iter().map(|b| (b.offset() as u64, b.metaDataLength() as u64, b.bodyLength() as u64)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::read::testing::{Read, arrow_file, names_and_scores, read_as_good};
    use super::*;

    /// An Arrow file of 3 batches of 50 rows.
    fn file() -> Vec<u8> {
        arrow_file(&names_and_scores(150), 50)
    }

    fn read_bytes(bytes: &[u8]) -> Read {
        let dir = tempfile::tempdir().unwrap();
        read_as_good(dir.path(), Format::Arrow, &file(), bytes, 64).unwrap()
    }

    #[test]
    fn a_corrupt_batch_costs_its_counted_rows_and_the_next_is_read() {
        let mut bytes = file();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.arrow"), &bytes).unwrap();
        let footer = read_footer(&mut File::open(dir.path().join("x.arrow")).unwrap()).unwrap();
        let block = footer.batches[1];
        let body = (block.offset() + block.metaDataLength() as i64) as usize;
        bytes[body..body + 64].fill(0xff);
        let got = read_bytes(&bytes);
        assert_eq!(got.rejects.len(), 1, "{:?}", got.rejects);
        let (id, rows, reason) = &got.rejects[0];
        assert_eq!((id.as_str(), *rows), ("t.arrow", 50));
        assert!(
            reason.starts_with("record batch 2 of 3 is corrupt, 50 rows not read (rows 50-99 of the file)"),
            "{reason}"
        );
        let ids = got.ids();
        assert_eq!((ids.len(), ids[50].as_str()), (100, "100"), "the third batch keeps its numbers");
    }

    #[test]
    fn a_truncated_file_says_its_row_count_is_unknown() {
        let bytes = file();
        let got = read_bytes(&bytes[..bytes.len() / 2]);
        assert_eq!(got.emitted(), 0);
        assert_eq!(got.rejects.len(), 1);
        assert!(got.rejects[0].2.contains("its row count is unknown"), "{:?}", got.rejects);
    }
}
