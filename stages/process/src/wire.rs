//! The bytes of the protocol (plugins/PROTOCOL.md): a JSON header line, then, when the header says
//! `"bytes": N`, N bytes of one Arrow IPC stream.

use std::io::{BufRead, Cursor, Read, Write};

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
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
        // Grown as bytes arrive, so a nonsense count cannot make pipe allocate it up front.
        let mut data = Vec::new();
        r.by_ref().take(bytes).read_to_end(&mut data).map_err(ReadError::Io)?;
        if (data.len() as u64) < bytes {
            return Err(ReadError::Eof);
        }
        Some(decode(data).map_err(|e| ReadError::Garbage(format!("a payload that is not an Arrow IPC stream ({e})")))?)
    } else {
        None
    };
    Ok(Message { kind, header, payload })
}

/// Decodes one Arrow IPC stream.
pub fn decode(data: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), arrow::error::ArrowError> {
    let reader = StreamReader::try_new(Cursor::new(data), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

/// Encodes a header and an optional payload (a schema and its batches) as one message.
pub fn encode(
    mut header: Map<String, Value>,
    payload: Option<(&SchemaRef, &[RecordBatch])>,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
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
