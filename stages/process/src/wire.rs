//! The bytes of the protocol (plugins/PROTOCOL.md): a JSON header line, then, when the header says
//! `"bytes": N`, N bytes of one Arrow IPC stream.

use std::io::{BufRead, Read, Write};

use arrow::buffer::{Buffer, MutableBuffer};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this host speaks.
pub const PROTOCOL: u64 = 1;

/// The longest header line accepted; anything longer is not a header.
pub const MAX_HEADER: usize = 1 << 20;

/// The `type` of a message. pipe sends `describe`, `batch` and `end`; a plugin answers with
/// `schema` or `error`, `result` or `failed`, and `bye`. A type this host does not know is kept
/// by its name, so that an error can quote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// pipe's first message: the params and the input schema.
    Describe,
    /// The answer to `describe`: the output schema.
    Schema,
    /// The answer to `describe` when the plugin refuses its configuration.
    Error,
    /// A batch of input rows.
    Batch,
    /// The answer to a batch: the rows it became, and the rows that failed.
    Result,
    /// The answer to a batch the plugin could not handle at all.
    Failed,
    /// pipe's last message.
    End,
    /// The answer to `end`, with any rows held back.
    Bye,
    /// Any other type.
    #[serde(untagged)]
    Other(String),
}

impl Kind {
    /// The type as it appears in a header.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Describe => "describe",
            Kind::Schema => "schema",
            Kind::Error => "error",
            Kind::Batch => "batch",
            Kind::Result => "result",
            Kind::Failed => "failed",
            Kind::End => "end",
            Kind::Bye => "bye",
            Kind::Other(name) => name,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message read from a plugin: its header and the decoded payload, if it had one.
#[derive(Debug)]
pub struct Message {
    /// The header's `type`.
    pub kind: Kind,
    /// The whole header.
    pub header: Map<String, Value>,
    /// The payload's schema and batches.
    pub payload: Option<(SchemaRef, Vec<RecordBatch>)>,
}

impl Message {
    /// A string field of the header.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.header.get(key).and_then(Value::as_str)
    }

    /// An unsigned integer field of the header.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.header.get(key).and_then(Value::as_u64)
    }
}

/// Why no message could be read.
#[derive(Debug)]
pub enum ReadError {
    /// stdout closed.
    Eof,
    /// Bytes that are not a protocol message (quoted, shortened).
    Garbage(String),
    /// Reading failed.
    Io(std::io::Error),
}

/// Reads the next message, decoding its payload.
pub fn read_message(r: &mut impl BufRead) -> Result<Message, ReadError> {
    let mut line = Vec::new();
    let n = r.by_ref().take(MAX_HEADER as u64 + 1).read_until(b'\n', &mut line).map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Eof);
    }
    if line.last() != Some(&b'\n') {
        return Err(ReadError::Garbage(if n > MAX_HEADER {
            format!("a line of over {MAX_HEADER} bytes starting {}", quote(&line))
        } else {
            format!("{} and then the end of the stream", quote(&line))
        }));
    }
    let header = match serde_json::from_slice::<Value>(&line) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ReadError::Garbage(quote(&line))),
    };
    let Some(kind) = header.get("type").and_then(|t| Kind::deserialize(t).ok()) else {
        return Err(ReadError::Garbage(format!("a header without \"type\": {}", quote(&line))));
    };
    let bytes = match header.get("bytes") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| ReadError::Garbage(format!("\"bytes\" is not a count: {v}")))?,
    };
    let payload = if bytes > 0 {
        let data = read_payload(r, bytes)?;
        Some(decode(data).map_err(|e| ReadError::Garbage(format!("a payload that is not an Arrow IPC stream ({e})")))?)
    } else {
        None
    };
    Ok(Message { kind, header, payload })
}

/// The first allocation for a payload; it doubles from there as bytes arrive.
const FIRST_CHUNK: usize = 1 << 20;

/// Reads `bytes` payload bytes into one 64-byte aligned buffer, so that the IPC decoder takes
/// the columns' memory as it is instead of copying each into an aligned one. The buffer grows
/// as bytes arrive, so a nonsense count cannot make pipe allocate it up front.
fn read_payload(r: &mut impl Read, bytes: u64) -> Result<Buffer, ReadError> {
    let total = usize::try_from(bytes).map_err(|_| ReadError::Garbage(format!("\"bytes\" is too large: {bytes}")))?;
    let mut data = MutableBuffer::new(total.min(FIRST_CHUNK));
    while data.len() < total {
        let start = data.len();
        let end = total.min(start.saturating_mul(2).max(FIRST_CHUNK));
        data.resize(end, 0);
        r.read_exact(&mut data.as_slice_mut()[start..end]).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReadError::Eof,
            _ => ReadError::Io(e),
        })?;
    }
    Ok(data.into())
}

/// Decodes one Arrow IPC stream. The batches share `data`'s memory (no copy) where their
/// buffers are aligned, which they are in a stream that starts at an aligned address.
pub fn decode(mut data: Buffer) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !data.is_empty() {
        if let Some(batch) = decoder.decode(&mut data)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    let schema = decoder.schema().ok_or_else(|| ArrowError::IpcError("a stream without a schema".into()))?;
    Ok((schema, batches))
}

/// Encodes a header and an optional payload (a schema and its batches) as one message.
pub fn encode(
    mut header: Map<String, Value>,
    payload: Option<(&SchemaRef, &[RecordBatch])>,
) -> Result<Vec<u8>, ArrowError> {
    let data = match payload {
        Some((schema, batches)) => {
            let mut w = StreamWriter::try_new(Vec::new(), schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            w.into_inner()?
        }
        None => Vec::new(),
    };
    header.insert("bytes".into(), data.len().into());
    let mut out = serde_json::to_vec(&header).expect("a JSON map serializes");
    out.push(b'\n');
    out.extend_from_slice(&data);
    Ok(out)
}

/// A header of this type with these fields.
pub fn header(kind: Kind, fields: &[(&str, Value)]) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("type".into(), kind.as_str().into());
    for (k, v) in fields {
        map.insert((*k).into(), v.clone());
    }
    map
}

/// Writes a whole message and flushes.
pub fn write_all(w: &mut impl Write, message: &[u8]) -> std::io::Result<()> {
    w.write_all(message)?;
    w.flush()
}

/// Bytes for an error message: at most 80 characters, escaped.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\n');
    let short: String = text.chars().take(80).collect();
    let more = if text.chars().count() > 80 { "..." } else { "" };
    format!("{short:?}{more}")
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let b = batch();
        let mut bytes =
            encode(header(Kind::Batch, &[("seq", 3.into())]), Some((&b.schema(), std::slice::from_ref(&b)))).unwrap();
        bytes.extend(encode(header(Kind::End, &[]), None).unwrap());
        let mut r = Cursor::new(bytes);
        let m = read_message(&mut r).unwrap();
        assert_eq!((m.kind.as_str(), m.u64("seq")), ("batch", Some(3)));
        let (schema, batches) = m.payload.unwrap();
        assert_eq!(schema, b.schema());
        assert_eq!(batches, vec![b]);
        let m = read_message(&mut r).unwrap();
        assert_eq!(m.kind, Kind::End);
        assert!(m.payload.is_none());
        assert!(matches!(read_message(&mut r), Err(ReadError::Eof)));
    }

    #[test]
    fn decoded_columns_share_the_payload_memory() {
        let b = batch();
        let message = encode(header(Kind::Batch, &[]), Some((&b.schema(), std::slice::from_ref(&b)))).unwrap();
        let line = message.iter().position(|&c| c == b'\n').unwrap() + 1;
        let data = Buffer::from(MutableBuffer::from(message[line..].to_vec()));
        let span = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        let (_, batches) = decode(data.clone()).unwrap();
        assert_eq!(batches, vec![b]);
        for column in batches[0].columns() {
            for buffer in column.to_data().buffers() {
                assert!(span.contains(&(buffer.as_ptr() as usize)), "a column buffer was copied");
            }
        }
    }

    #[test]
    fn kinds_read_by_name_and_keep_unknown_names() {
        let known = [
            Kind::Describe,
            Kind::Schema,
            Kind::Error,
            Kind::Batch,
            Kind::Result,
            Kind::Failed,
            Kind::End,
            Kind::Bye,
            Kind::Other("hello".into()),
        ];
        for kind in known {
            let mut r = Cursor::new(encode(header(kind.clone(), &[]), None).unwrap());
            let m = read_message(&mut r).unwrap();
            assert_eq!(m.kind, kind);
            assert_eq!(m.header["type"], kind.as_str());
            assert_eq!(serde_json::to_value(&kind).unwrap(), kind.as_str());
        }
        assert_eq!(Kind::Other("Result".into()).to_string(), "Result");
        let mut r = Cursor::new(b"{\"type\": 3}\n".to_vec());
        let Err(ReadError::Garbage(g)) = read_message(&mut r) else { panic!() };
        assert!(g.starts_with("a header without \"type\""), "{g}");
    }

    #[test]
    fn garbage_is_quoted() {
        let mut r = Cursor::new(b"hello from print\n".to_vec());
        let Err(ReadError::Garbage(g)) = read_message(&mut r) else { panic!() };
        assert_eq!(g, "\"hello from print\"");
        let mut r = Cursor::new(b"{\"type\": \"result\", \"bytes\": 4}\nabcd".to_vec());
        let Err(ReadError::Garbage(g)) = read_message(&mut r) else { panic!() };
        assert!(g.starts_with("a payload that is not an Arrow IPC stream"), "{g}");
        let mut r = Cursor::new(b"{\"type\": \"result\", \"bytes\": 40}\nabcd".to_vec());
        assert!(matches!(read_message(&mut r), Err(ReadError::Eof)));
        let mut r = Cursor::new(b"[1, 2]\n".to_vec());
        assert!(matches!(read_message(&mut r), Err(ReadError::Garbage(_))));
    }
}
