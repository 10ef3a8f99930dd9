//! `http://` reads against a real HTTP server: tests/fixtures/storage/http_server.py, started by
//! the test on 127.0.0.1, answers HEAD and ranged GET as object_store's HTTP store asks, and,
//! started with --webdav, PROPFIND (how a prefix is listed over HTTP). collect.table reads a
//! Parquet object by its URL and collect.files reads one object, and a prefix from the WebDAV
//! server; a prefix on a plain server is an error that says PROPFIND is not answered.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::s3::Killed;
use common::{pipe, repo, text, write};

fn python() -> PathBuf {
    let venv = repo().join(".pipe/venv/bin/python3");
    match venv.exists() {
        true => venv,
        false => PathBuf::from("python3"),
    }
}

/// The fixture server of `root` on a free port, logging requests to `log`.
fn serve(root: &Path, webdav: bool, log: &Path) -> (Killed, u16) {
    let mut command = Command::new(python());
    command.arg(repo().join("tests/fixtures/storage/http_server.py")).arg(root);
    if webdav {
        command.arg("--webdav");
    }
    let mut child = command.env("HTTP_SERVER_LOG", log).stdout(Stdio::piped()).spawn().expect("python3 starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("ready ").unwrap_or_else(|| panic!("the server said {line:?}"));
    let port = port.parse().unwrap();
    (Killed(child), port)
}

const ROWS: usize = 25;

fn names() -> Vec<String> {
    (0..ROWS).map(|i| format!("n{i:02}")).collect()
}

fn input_table(path: &Path) {
    let schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(names()))]).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn files_pipeline(url: &str) -> String {
    format!(
        "[pipeline]\nname = \"h\"\n\n[[stage]]\nid = \"files\"\nuses = \"collect.files\"\npath = \"{url}\"\n\
         load = \"text\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"files.jsonl\"\n"
    )
}

fn run(dir: &Path, file: &str) -> std::process::Output {
    pipe().args(["run", file, "--quiet"]).current_dir(dir).output().unwrap()
}

#[test]
fn collect_table_and_collect_files_read_http_urls() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(served.join("notes/more")).unwrap();
    input_table(&served.join("rows.parquet"));
    std::fs::write(served.join("notes/a.txt"), "alpha").unwrap();
    std::fs::write(served.join("notes/b.txt"), "beta").unwrap();
    std::fs::write(served.join("notes/more/c.txt"), "gamma").unwrap();
    let log = dir.path().join("requests.log");
    let (_plain, port) = serve(&served, false, &log);
    let base = format!("http://127.0.0.1:{port}");

    write(
        dir.path(),
        "t.toml",
        format!(
            "[pipeline]\nname = \"h\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
             path = \"{base}/rows.parquet\"\nid_column = \"name\"\n\n[[stage]]\nid = \"save\"\n\
             uses = \"sink.table\"\npath = \"rows.csv\"\n"
        ),
    );
    let out = run(dir.path(), "t.toml");
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap();
    let got: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(got, names());
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.lines().any(|l| l.starts_with("HEAD /rows.parquet")), "{requests}");
    assert!(requests.lines().any(|l| l.starts_with("GET /rows.parquet")), "{requests}");

    // One object by its URL: its file name is its id.
    write(dir.path(), "one.toml", files_pipeline(&format!("{base}/notes/b.txt")));
    let out = run(dir.path(), "one.toml");
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.path().join("out/files.jsonl")).unwrap();
    assert_eq!(
        rows.trim(),
        format!("{{\"id\":\"b.txt\",\"path\":\"{base}/notes/b.txt\",\"size\":4,\"text\":\"beta\"}}"),
        "{rows}"
    );

    // A prefix needs a listing: a plain web server does not give one, and the error says so.
    write(dir.path(), "prefix.toml", files_pipeline(&format!("{base}/notes/")));
    let out = run(dir.path(), "prefix.toml");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("does not answer WebDAV PROPFIND"), "{}", text(&out));
    assert!(text(&out).contains(&format!("{base}/notes/")), "{}", text(&out));

    // A WebDAV server lists it, and a glob matches under it.
    let (_webdav, port) = serve(&served, true, &log);
    let base = format!("http://127.0.0.1:{port}");
    write(dir.path(), "prefix.toml", files_pipeline(&format!("{base}/notes/")));
    let out = run(dir.path(), "prefix.toml");
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.path().join("out/files.jsonl")).unwrap();
    let ids: Vec<&str> = rows.lines().map(|l| l.split('"').nth(3).unwrap()).collect();
    assert_eq!(ids, ["a.txt", "b.txt", "more/c.txt"], "{rows}");
    assert!(rows.contains("\"text\":\"gamma\""), "{rows}");
    write(dir.path(), "glob.toml", files_pipeline(&format!("{base}/notes/*.txt")));
    let out = run(dir.path(), "glob.toml");
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.path().join("out/files.jsonl")).unwrap();
    let ids: Vec<&str> = rows.lines().map(|l| l.split('"').nth(3).unwrap()).collect();
    assert_eq!(ids, ["a.txt", "b.txt"], "{rows}");

    // A missing object is an error naming its URL.
    let table = std::fs::read_to_string(dir.path().join("t.toml")).unwrap();
    write(dir.path(), "gone.toml", table.replace("/rows.parquet", "/gone.parquet"));
    let out = run(dir.path(), "gone.toml");
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("no object at http://127.0.0.1:") && said.contains("/gone.parquet"), "{said}");
}
