//! Drives the built `pipe-plugin-dedup` binary over real pipes, the way pipe's `process` stage
//! does: JSON header lines and Arrow IPC stream payloads on stdin, answers read from stdout.

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde_json::{Value, json};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("body", DataType::LargeUtf8, true),
        Field::new("n", DataType::Int64, false),
    ]))
}

/// A batch whose `text` and `body` columns both hold `texts`.
fn batch(ids: &[&str], texts: &[Option<&str>]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.to_vec())),
        Arc::new(StringArray::from(texts.to_vec())),
        Arc::new(LargeStringArray::from(texts.to_vec())),
        Arc::new(Int64Array::from((0..ids.len() as i64).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

fn encode(schema: &Schema, batches: &[RecordBatch]) -> Vec<u8> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    writer.into_inner().unwrap()
}

/// The plugin process, with its stdin and stdout as pipe would hold them.
struct Plugin {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// One answer: its header, and the schema and batches of its payload when it has one.
struct Answer {
    header: Value,
    schema: Option<SchemaRef>,
    batches: Vec<RecordBatch>,
}

impl Answer {
    /// The ids of every row in the payload.
    fn ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for b in &self.batches {
            let column = b.column_by_name("id").unwrap().as_string::<i32>();
            ids.extend(column.iter().map(|id| id.unwrap().to_string()));
        }
        ids
    }
}

impl Plugin {
    fn spawn() -> Plugin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipe-plugin-dedup"))
            .env("PIPE_PROTOCOL", "1")
            .env("PIPE_STAGE", "dedup")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Plugin { child, stdin, stdout }
    }

    /// Sends raw bytes: one or more messages, or deliberately broken ones.
    fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, mut header: Value, payload: &[u8]) {
        if !payload.is_empty() {
            header["bytes"] = json!(payload.len());
        }
        let mut message = serde_json::to_vec(&header).unwrap();
        message.push(b'\n');
        message.extend_from_slice(payload);
        self.send_raw(&message);
    }

    fn receive(&mut self) -> Answer {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no complete header line on stdout: {line:?}");
        let header: Value = serde_json::from_str(&line).unwrap();
        let size = header["bytes"].as_u64().expect("every answer sets `bytes`") as usize;
        if size == 0 {
            return Answer { header, schema: None, batches: Vec::new() };
        }
        let mut payload = vec![0; size];
        self.stdout.read_exact(&mut payload).unwrap();
        let reader = StreamReader::try_new(Cursor::new(payload), None).unwrap();
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
        Answer { header, schema: Some(schema), batches }
    }

    fn describe(&mut self, params: Value) -> Answer {
        let payload = encode(&schema(), &[]);
        self.send(json!({"type": "describe", "protocol": 1, "stage": "dedup", "params": params}), &payload);
        self.receive()
    }

    fn batch(&mut self, seq: u64, batch: &RecordBatch) -> Answer {
        let payload = encode(&batch.schema(), std::slice::from_ref(batch));
        self.send(json!({"type": "batch", "seq": seq, "rows": batch.num_rows()}), &payload);
        self.receive()
    }

    /// Closes stdin and waits: the exit status, the rest of stdout and stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let output = self.child.wait_with_output().unwrap();
        (output.status, rest, String::from_utf8(output.stderr).unwrap())
    }

    /// Sends `end`, expects `bye` and a clean exit; returns stderr.
    fn end(mut self) -> String {
        self.send(json!({"type": "end"}), &[]);
        let bye = self.receive();
        assert_eq!(bye.header, json!({"type": "bye", "bytes": 0}));
        let (status, rest, stderr) = self.finish();
        assert!(status.success(), "exit status {status}; stderr: {stderr}");
        assert_eq!(rest, "", "nothing may follow `bye` on stdout");
        stderr
    }
}

#[test]
fn describe_answers_the_input_schema() {
    let mut plugin = Plugin::spawn();
    let answer = plugin.describe(json!({"column": "text"}));
    assert_eq!(answer.header["type"], "schema");
    assert_eq!(answer.header["protocol"], 1);
    assert_eq!(answer.schema, Some(schema()));
    assert!(answer.batches.is_empty());
    // What `pipe validate` does: describe, then end. No batches, so no summary on stderr.
    assert_eq!(plugin.end(), "");
}

#[test]
fn describe_rejects_bad_params() {
    let cases = [
        (json!({"column": "title"}), Some("column"), "no column `title` in the input"),
        (json!({"column": "n"}), Some("column"), "column `n` is Int64, not Utf8"),
        (json!({"column": 7}), Some("column"), "must be a string: the name of a Utf8 column"),
        (json!({"normalize": "yes"}), Some("normalize"), "must be true or false"),
        (json!({"colum": "text"}), Some("colum"), "unknown param `colum`"),
    ];
    for (params, key, message) in cases {
        let mut plugin = Plugin::spawn();
        let answer = plugin.describe(params.clone());
        let h = &answer.header;
        assert_eq!(h["type"], "error", "{params}");
        assert_eq!(h["key"].as_str(), key, "{params}");
        assert_eq!(h["message"], message, "{params}");
        assert_eq!(h["bytes"], 0);
        assert!(answer.schema.is_none());
        if key == Some("column") && params["column"].is_string() {
            assert_eq!(h["hint"], "Utf8 columns in the input: text, body");
        } else {
            assert!(h["hint"].is_string(), "{params}: a hint");
        }
        // `pipe validate` sends `end` after a describe error and waits for the exit.
        plugin.end();
    }
}

#[test]
fn describe_rejects_another_protocol_version() {
    let mut plugin = Plugin::spawn();
    plugin.send(json!({"type": "describe", "protocol": 2, "params": {}}), &encode(&schema(), &[]));
    let answer = plugin.receive();
    assert_eq!(answer.header["type"], "error");
    assert_eq!(answer.header["key"], Value::Null);
    assert!(answer.header["message"].as_str().unwrap().contains("protocol 1"), "{}", answer.header);
    plugin.end();
}

#[test]
fn drops_duplicates_across_batches() {
    let mut plugin = Plugin::spawn();
    assert_eq!(plugin.describe(json!({})).header["type"], "schema");

    let r0 = plugin
        .batch(0, &batch(&["a0", "a1", "a2", "a3"], &[Some("Hello world"), Some("hello   WORLD"), Some("foo"), None]));
    assert_eq!(r0.header["type"], "result");
    assert_eq!(r0.header["seq"], 0);
    assert_eq!(r0.header["errors"], json!([{"id": "a3", "reason": "null text"}]));
    assert_eq!(r0.schema, Some(schema()));
    assert_eq!(r0.ids(), ["a0", "a2"]);
    // The kept rows come through whole: every column, untouched.
    let b = &r0.batches[0];
    assert_eq!(b.column_by_name("text").unwrap().as_string::<i32>().value(0), "Hello world");
    assert_eq!(b.column_by_name("n").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().values(), &[0, 2]);

    let r1 = plugin.batch(1, &batch(&["b0", "b1", "b2"], &[Some("FOO"), Some("bar"), Some(" Hello\tWorld ")]));
    assert_eq!(r1.header["seq"], 1);
    assert_eq!(r1.header["errors"], json!([]));
    assert_eq!(r1.ids(), ["b1"]);

    let r2 = plugin.batch(2, &batch(&["c0", "c1", "c2", "c3"], &[Some("baz"), Some("bar"), Some("new"), Some("baz")]));
    assert_eq!(r2.header["seq"], 2);
    assert_eq!(r2.ids(), ["c0", "c2"]);

    // A batch whose rows are all duplicates: a result with no payload.
    let r3 = plugin.batch(3, &batch(&["d0"], &[Some("NEW")]));
    assert_eq!(r3.header, json!({"type": "result", "seq": 3, "errors": [], "bytes": 0}));

    let stderr = plugin.end();
    assert!(stderr.contains("dedup: kept 5 of 12 rows (6 duplicates dropped, 1 null texts)"), "{stderr}");
}

#[test]
fn exact_comparison_on_a_large_utf8_column() {
    let mut plugin = Plugin::spawn();
    assert_eq!(plugin.describe(json!({"column": "body", "normalize": false})).header["type"], "schema");
    let r = plugin.batch(0, &batch(&["a", "b", "c", "d"], &[Some("Hi"), Some("hi"), Some("Hi "), Some("Hi")]));
    assert_eq!(r.ids(), ["a", "b", "c"]);
    plugin.end();
}

#[test]
fn answers_pipelined_batches_in_order() {
    // pipe may send the next batch before the previous result: send two, then read two.
    let mut plugin = Plugin::spawn();
    plugin.describe(json!({}));
    for (seq, ids) in [(0, ["x0", "x1"]), (1, ["y0", "y1"])] {
        let b = batch(&ids, &[Some("same"), Some(ids[0])]);
        plugin.send(json!({"type": "batch", "seq": seq}), &encode(&schema(), &[b]));
    }
    // An unknown message type from a later minor version is ignored.
    plugin.send(json!({"type": "progress", "done": 0.5}), &[]);
    assert_eq!(plugin.receive().ids(), ["x0", "x1"]);
    let second = plugin.receive();
    assert_eq!(second.header["seq"], 1);
    assert_eq!(second.ids(), ["y1"]);
    plugin.end();
}

#[test]
fn eof_before_end_exits_1() {
    let mut plugin = Plugin::spawn();
    plugin.describe(json!({}));
    let (status, _, stderr) = plugin.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("before the `end` message"), "{stderr}");
}

#[test]
fn malformed_messages_exit_2() {
    let long = format!("{{\"type\": \"end\", \"pad\": \"{}\"}}\n", "x".repeat(1 << 20));
    let cases: [(&[u8], &str); 5] = [
        (b"hello\n", "header is not a protocol message"),
        (b"{\"seq\": 0}\n", "header is not a protocol message"),
        (long.as_bytes(), "header line longer than 1 MiB"),
        (b"{\"type\": \"batch\", \"seq\": 0, \"bytes\": 4}\nabcd", "batch 0 before a successful describe"),
        (b"{\"type\": \"describe\", \"protocol\": 1, \"bytes\": 4}\nabcd", "describe payload"),
    ];
    for (bytes, reason) in cases {
        let mut plugin = Plugin::spawn();
        // The plugin may exit before reading everything (the long line): a broken pipe is fine.
        let _ = plugin.stdin.as_mut().unwrap().write_all(bytes);
        let (status, stdout, stderr) = plugin.finish();
        assert_eq!(status.code(), Some(2), "{reason}: {stderr}");
        assert_eq!(stdout, "", "{reason}");
        assert!(stderr.contains(reason), "expected {reason:?} in {stderr:?}");
    }
}

#[test]
fn truncated_payload_exits_2() {
    let mut plugin = Plugin::spawn();
    plugin.describe(json!({}));
    plugin.send_raw(b"{\"type\": \"batch\", \"seq\": 0, \"bytes\": 100}\nshort");
    let (status, _, stderr) = plugin.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stdin closed after 5 of the 100 payload bytes"), "{stderr}");
}
