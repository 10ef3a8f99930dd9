//! `pipe-plugin-dedup`: a `process` plugin for pipe, written in Rust, that drops rows whose text
//! repeats an earlier row's.
//!
//! It speaks the process-plugin protocol, version 1 (plugins/PROTOCOL.md): pipe writes messages
//! to our stdin and reads our answers from stdout. Each message is a JSON header line, followed,
//! when the header has `"bytes": N` with N > 0, by N bytes of Arrow IPC stream. This file is the
//! whole protocol side; `dedup.rs` is the work. Nothing here comes from pipe's own crates: the
//! protocol needs only JSON and Arrow.
//!
//! Exit status: 0 after answering `end`; 1 when stdin closes before `end` (or stdout fails);
//! 2 when pipe sends something that is not a message (the reason goes to stderr).

mod dedup;

use std::io::{self, BufRead, BufWriter, Cursor, Read, Write};
use std::process::ExitCode;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::Deserialize;
use serde_json::{Value, json};

use dedup::{Dedup, Params};

/// The protocol version this plugin speaks.
const PROTOCOL: u64 = 1;
/// The longest header line the protocol allows, without its newline.
const MAX_HEADER: usize = 1 << 20;

/// The header keys this plugin reads; others are ignored, as the protocol asks.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: String,
    bytes: Option<u64>,
    seq: Option<u64>,
    protocol: Option<Value>,
    #[serde(default)]
    params: Value,
}

/// Why the loop stopped without a `bye`.
enum Stop {
    /// stdin closed between two messages, before `end`.
    Eof,
    /// Reading stdin or writing stdout failed.
    Io(io::Error),
    /// pipe sent something that is not a protocol message.
    Malformed(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

fn malformed(what: impl Into<String>) -> Stop {
    Stop::Malformed(what.into())
}

fn main() -> ExitCode {
    let mut input = io::stdin().lock();
    let mut output = BufWriter::new(io::stdout().lock());
    let mut dedup = None;
    let result = serve(&mut input, &mut output, &mut dedup);
    // One summary line, once there was data: `pipe validate` (describe, then end) stays quiet.
    if let Some(d) = dedup.as_ref().filter(|d| d.batches > 0) {
        eprintln!(
            "dedup: kept {} of {} rows ({} duplicates dropped, {} null texts)",
            d.kept, d.rows_in, d.duplicates, d.nulls
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Eof) => {
            eprintln!("dedup: stdin closed before the `end` message");
            ExitCode::from(1)
        }
        Err(Stop::Io(e)) => {
            eprintln!("dedup: {e}");
            ExitCode::from(1)
        }
        Err(Stop::Malformed(what)) => {
            eprintln!("dedup: malformed message from pipe: {what}");
            ExitCode::from(2)
        }
    }
}

/// The protocol loop: read one message, answer it (one write, one flush), read the next. The
/// plugin never waits between reading a batch and answering it, which is what keeps pipe's
/// pipelining (up to two batches in flight) safe. `dedup` is set by a successful describe.
fn serve(input: &mut impl BufRead, output: &mut impl Write, dedup: &mut Option<Dedup>) -> Result<(), Stop> {
    loop {
        let (header, payload) = read_message(input)?;
        match header.kind.as_str() {
            "describe" => {
                let asked = header.protocol.as_ref().and_then(Value::as_u64);
                if asked != Some(PROTOCOL) {
                    let asked = header.protocol.map_or("none".to_string(), |v| v.to_string());
                    let message = format!("pipe-plugin-dedup speaks protocol {PROTOCOL}, pipe asked for {asked}");
                    send(output, json!({"type": "error", "key": null, "message": message, "hint": null}), &[])?;
                    continue;
                }
                let (schema, _) = decode(&payload).map_err(|e| malformed(format!("describe payload: {e}")))?;
                match Params::parse(&header.params, &schema) {
                    Ok(params) => {
                        *dedup = Some(Dedup::new(params));
                        // Output schema = input schema: the plugin only drops rows.
                        let payload = encode(&schema, &[]).map_err(io::Error::other)?;
                        send(output, json!({"type": "schema", "protocol": PROTOCOL}), &payload)?;
                    }
                    Err(e) => {
                        let answer = json!({"type": "error", "key": e.key, "message": e.message, "hint": e.hint});
                        send(output, answer, &[])?;
                    }
                }
            }
            "batch" => {
                let seq = header.seq.ok_or_else(|| malformed("batch without `seq`"))?;
                let dedup =
                    dedup.as_mut().ok_or_else(|| malformed(format!("batch {seq} before a successful describe")))?;
                let (schema, batches) = decode(&payload).map_err(|e| malformed(format!("batch {seq} payload: {e}")))?;
                // Err: the batch cannot be handled at all; every row of it fails, and we go on.
                let answer = filter_all(dedup, &batches).and_then(|(kept, errors)| {
                    // A result with no rows may carry no payload at all ("bytes": 0).
                    let payload =
                        if kept.is_empty() { Vec::new() } else { encode(&schema, &kept).map_err(|e| e.to_string())? };
                    Ok((payload, errors))
                });
                match answer {
                    Ok((payload, errors)) => {
                        let errors: Vec<Value> =
                            errors.iter().map(|e| json!({"id": e.id, "reason": e.reason})).collect();
                        send(output, json!({"type": "result", "seq": seq, "errors": errors}), &payload)?;
                    }
                    Err(message) => send(output, json!({"type": "failed", "seq": seq, "message": message}), &[])?,
                }
            }
            "end" => {
                // Deduplication here decides each row as it arrives, so nothing is held back
                // for the `bye` payload.
                send(output, json!({"type": "bye"}), &[])?;
                return Ok(());
            }
            // A message type added after version 1 that needs no answer: ignore it.
            _ => {}
        }
    }
}

/// Runs every record batch of one `batch` message through `dedup`, keeping the non-empty parts.
fn filter_all(dedup: &mut Dedup, batches: &[RecordBatch]) -> Result<(Vec<RecordBatch>, Vec<dedup::RowError>), String> {
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    for batch in batches {
        let (rows, mut row_errors) = dedup.filter(batch)?;
        if rows.num_rows() > 0 {
            kept.push(rows);
        }
        errors.append(&mut row_errors);
    }
    Ok((kept, errors))
}

/// Reads one message: the header line (at most 1 MiB) and its payload (empty when it has none).
fn read_message(input: &mut impl BufRead) -> Result<(Header, Vec<u8>), Stop> {
    let mut line = Vec::new();
    // One byte more than the limit, to tell "exactly at the limit" from "over it".
    input.take(MAX_HEADER as u64 + 1).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(Stop::Eof);
    }
    if line.pop_if(|last| *last == b'\n').is_none() {
        return Err(malformed(if line.len() > MAX_HEADER {
            "header line longer than 1 MiB".to_string()
        } else {
            "stdin closed in the middle of a header line".to_string()
        }));
    }
    let header: Header = serde_json::from_slice(&line).map_err(|e| {
        let start = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        malformed(format!("header is not a protocol message ({e}): {start:?}"))
    })?;
    let size = header.bytes.unwrap_or(0);
    let mut payload = Vec::new();
    // `take` rather than a buffer of `size` zeroes: a nonsense size must not allocate up front.
    input.take(size).read_to_end(&mut payload)?;
    if payload.len() as u64 != size {
        return Err(malformed(format!("stdin closed after {} of the {size} payload bytes", payload.len())));
    }
    Ok((header, payload))
}

/// Writes one message, header line and payload, with a single write, then flushes: pipe sees
/// each answer as soon as it is complete. `bytes` is set from the payload.
fn send(output: &mut impl Write, mut header: Value, payload: &[u8]) -> io::Result<()> {
    header["bytes"] = json!(payload.len());
    let mut message = serde_json::to_vec(&header)?;
    message.push(b'\n');
    message.extend_from_slice(payload);
    output.write_all(&message)?;
    output.flush()
}

/// Decodes a payload: one Arrow IPC stream, its schema and its record batches.
fn decode(payload: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    if payload.is_empty() {
        return Err(ArrowError::IpcError("no payload where an Arrow IPC stream was expected".to_string()));
    }
    let reader = StreamReader::try_new(Cursor::new(payload), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

/// Encodes a schema and zero or more batches as one Arrow IPC stream.
fn encode(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.into_inner()
}
