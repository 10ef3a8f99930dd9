//! Object storage against a real S3-compatible server: moto's server on 127.0.0.1 (from
//! `scripts/setup --python`), reached through tests/fixtures/storage/flaky_proxy.py, which fails
//! a seeded 5% of requests with 503. collect.table reads a Parquet table from `s3://`, sink.images
//! and sink.table write to `s3://`, and the objects read back with boto3 and pyarrow are the rows
//! and image bytes written. A run killed during its uploads leaves no partial object, and the
//! next run completes them. Without moto the test is skipped with the reason, except under
//! CI=true, where that is a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BinaryArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::s3::{Killed, S3, free_port, python};
use common::{pipe, repo, text, write};

const ROWS: usize = 60;

/// The failing proxy in front of `upstream`, failing `share` of requests, each held `delay` s;
/// every request is logged to `log`.
fn proxy(upstream: u16, share: f64, delay: f64, log: &Path) -> (Killed, u16) {
    let port = free_port();
    let mut child = Command::new(python())
        .arg(repo().join("tests/fixtures/storage/flaky_proxy.py"))
        .args([port.to_string(), upstream.to_string(), share.to_string(), "7".to_string()])
        .env("FLAKY_PROXY_LOG", log)
        .env("FLAKY_PROXY_DELAY", delay.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the proxy starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (Killed(child), port)
}

/// boto3 against the server at `port` (see [`common::s3::boto_at`]), its output as text.
fn boto(port: u16, script: &str, args: &[&str]) -> String {
    String::from_utf8(common::s3::boto_at(port, script, args)).unwrap()
}

/// A small PNG of one gray level per row.
fn png(level: u8) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(4, 3, image::Luma([level]));
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn input_table(path: &Path) {
    let names: Vec<String> = (0..ROWS).map(|i| format!("r{i:03}")).collect();
    let images: Vec<Vec<u8>> = (0..ROWS).map(|i| png(i as u8 * 4)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("content", DataType::Binary, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(BinaryArray::from_iter_values(images.iter().map(|b| b.as_slice()))),
        ],
    )
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn pipeline(source: &str, out: &str) -> String {
    format!(
        "[pipeline]\nname = \"s3\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{source}\"\n\
         id_column = \"name\"\n\n[[stage]]\nid = \"images\"\nuses = \"sink.images\"\ncolumn = \"content\"\n\
         dir = \"s3://data/{out}/images\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
         path = \"s3://data/{out}/rows.parquet\"\ncolumns = [\"name\"]\n"
    )
}

fn run(dir: &Path, file: &str, port: u16) -> Command {
    pipe_at(dir, &["run", file], port)
}

/// `pipe ARGS` in `dir`, with the S3 endpoint at 127.0.0.1:`port` and test credentials.
fn pipe_at(dir: &Path, args: &[&str], port: u16) -> Command {
    let mut c = pipe();
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") {
            c.env_remove(key);
        }
    }
    c.args(args)
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    c
}

fn succeeded(out: Output) {
    assert!(out.status.success(), "{}", text(&out));
}

const LIST: &str = "r = s3.list_objects_v2(Bucket='data', Prefix=sys.argv[1])\n\
                    print('\\n'.join(sorted(o['Key'] for o in r.get('Contents', []))))";

const GET: &str = "sys.stdout.buffer.write(s3.get_object(Bucket='data', Key=sys.argv[1])['Body'].read())";

fn get(port: u16, key: &str) -> Vec<u8> {
    let prelude = format!(
        "import sys, boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test')\n"
    );
    let out = Command::new(python()).arg("-c").arg(prelude + GET).arg(key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out.stdout
}

/// The `name` column of the Parquet object `key`, read with pyarrow.
fn names_in(port: u16, key: &str) -> Vec<String> {
    let script = "import io, pyarrow.parquet as pq\n\
                  t = pq.read_table(io.BytesIO(s3.get_object(Bucket='data', Key=sys.argv[1])['Body'].read()))\n\
                  print(t.column_names)\nprint('\\n'.join(t.column('name').to_pylist()))";
    let out = boto(port, script, &[key]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("['name']"));
    lines.map(String::from).collect()
}

fn expected_names() -> Vec<String> {
    (0..ROWS).map(|i| format!("r{i:03}")).collect()
}

#[test]
fn a_table_from_s3_goes_to_s3_through_failing_requests_and_a_killed_run_leaves_no_partial_object() {
    let Some(server) = S3::start_or_skip("the object store test") else { return };
    let moto_port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("rows.parquet");
    input_table(&local);
    boto(
        moto_port,
        "s3.create_bucket(Bucket='data')\ns3.upload_file(sys.argv[1], 'data', 'in/rows.parquet')\n\
         s3.upload_file(sys.argv[1], 'data', 'in/parts/label=1/part-0.parquet')",
        &[local.to_str().unwrap()],
    );

    // 5% of requests fail with 503: the retries carry the run through.
    let log = dir.path().join("proxy.log");
    let (flaky, flaky_port) = proxy(moto_port, 0.05, 0.0, &log);
    write(dir.path(), "p.toml", pipeline("s3://data/in/rows.parquet", "out"));
    succeeded(run(dir.path(), "p.toml", flaky_port).output().unwrap());
    drop(flaky);
    let logged = std::fs::read_to_string(&log).unwrap();
    let failed = logged.lines().filter(|l| l.starts_with("503 ")).count();
    assert!(failed > 0, "the proxy failed no request of {}", logged.lines().count());
    assert_eq!(names_in(moto_port, "out/rows.parquet"), expected_names());
    let keys: Vec<String> = boto(moto_port, LIST, &["out/images/"]).lines().map(String::from).collect();
    let want: Vec<String> = expected_names().iter().map(|n| format!("out/images/{n}.png")).collect();
    assert_eq!(keys, want);
    for i in [0, 17, ROWS - 1] {
        assert_eq!(get(moto_port, &format!("out/images/r{i:03}.png")), png(i as u8 * 4), "image {i}");
    }

    // A prefix is a dataset folder, its Hive partition folders restored as columns.
    write(
        dir.path(),
        "parts.toml",
        "[pipeline]\nname = \"parts\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
         path = \"s3://data/in/parts/\"\nid_column = \"name\"\ncolumns = [\"name\", \"label\"]\n\n\
         [[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"parts.csv\"\n",
    );
    succeeded(run(dir.path(), "parts.toml", moto_port).output().unwrap());
    let csv = std::fs::read_to_string(dir.path().join("out/parts.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("id,name,label"));
    assert_eq!(csv.lines().nth(1), Some("r000,r000,1"));
    assert_eq!(csv.lines().count(), ROWS + 1);

    // A run killed while its uploads are under way (each request held 0.3 s) leaves only whole
    // objects (the proxy may still deliver a request whose body it had whole); the next run
    // uploads them all.
    let slow_log = dir.path().join("slow.log");
    let (_slow, slow_port) = proxy(moto_port, 0.0, 0.3, &slow_log);
    write(dir.path(), "k.toml", pipeline("s3://data/in/rows.parquet", "killed"));
    let mut child =
        Killed(run(dir.path(), "k.toml", slow_port).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let start = Instant::now();
    loop {
        let seen = std::fs::read_to_string(&slow_log).unwrap_or_default();
        let uploads: Vec<&str> = seen.lines().filter(|l| l.starts_with("req PUT /data/killed/")).collect();
        if uploads.len() >= 3 {
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "the run ended before it was killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no upload started: {seen}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let listed: Vec<String> = boto(moto_port, LIST, &["killed/"]).lines().map(String::from).collect();
    assert!(listed.len() < ROWS + 1, "every object was uploaded before the kill: {listed:?}");
    for key in &listed {
        let name = key.trim_start_matches("killed/images/").trim_end_matches(".png");
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(get(moto_port, key), png(i as u8 * 4), "{key} is not whole");
    }
    succeeded(run(dir.path(), "k.toml", moto_port).output().unwrap());
    assert_eq!(names_in(moto_port, "killed/rows.parquet"), expected_names());
    assert_eq!(boto(moto_port, LIST, &["killed/images/"]).lines().count(), ROWS);

    // What cannot be done is a diagnostic naming the URL or the key.
    write(dir.path(), "missing.toml", pipeline("s3://data/in/nothing.parquet", "x"));
    let out = run(dir.path(), "missing.toml", moto_port).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("no object at s3://data/in/nothing.parquet"), "{}", text(&out));
    write(
        dir.path(),
        "https.toml",
        pipeline("s3://data/in/rows.parquet", "x").replace("s3://data/x/rows", "https://example.com/rows"),
    );
    let out = run(dir.path(), "https.toml", moto_port).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("https:// URL, which pipe can read but not write"), "{}", text(&out));
}

/// moto's server with the bucket `data` holding `in/rows.parquet`, or why it cannot run here (a
/// failure under CI=true).
fn moto_with_input(dir: &Path) -> Option<S3> {
    let server = S3::start_or_skip("the object store test")?;
    let port = server.port;
    let local = dir.join("rows.parquet");
    input_table(&local);
    boto(
        port,
        "s3.create_bucket(Bucket='data')\ns3.upload_file(sys.argv[1], 'data', 'in/rows.parquet')",
        &[local.to_str().unwrap()],
    );
    Some(server)
}

/// The rows of `source` drawn by sink.grid, reported by sink.report and written one file per row
/// by sink.files, each to `grid`, `report` and `files`.
fn sinks_pipeline(source: &str, grid: &str, report: &str, files: &str) -> String {
    format!(
        "[pipeline]\nname = \"sinks\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{source}\"\n\
         id_column = \"name\"\n\n[[stage]]\nid = \"pixels\"\nuses = \"preprocess.image\"\nsize = [4, 3]\n\
         scale = 1.0\n\n[[stage]]\nid = \"grid\"\nuses = \"sink.grid\"\ncolumn = \"pixels\"\nrange = \"0,255\"\n\
         path = \"{grid}\"\n\n[[stage]]\nid = \"report\"\nuses = \"sink.report\"\nimage = \"pixels\"\n\
         range = \"0,255\"\npath = \"{report}\"\n\n[[stage]]\nid = \"files\"\nuses = \"sink.files\"\n\
         column = \"content\"\nname = \"{{id}}.png\"\ndir = \"{files}\"\n"
    )
}

#[test]
fn sink_grid_report_and_files_write_to_s3_through_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = moto_with_input(dir.path()) else { return };
    let moto_port = server.port;

    // The same pipeline to local paths: what the objects must hold.
    write(dir.path(), "local.toml", sinks_pipeline("rows.parquet", "grid.png", "report.html", "files"));
    succeeded(pipe().args(["run", "local.toml"]).current_dir(dir.path()).output().unwrap());

    let log = dir.path().join("proxy.log");
    let (flaky, flaky_port) = proxy(moto_port, 0.05, 0.0, &log);
    write(
        dir.path(),
        "s3.toml",
        sinks_pipeline(
            "s3://data/in/rows.parquet",
            "s3://data/sheets/grid.png",
            "s3://data/sheets/report.html",
            "s3://data/files/",
        ),
    );
    succeeded(run(dir.path(), "s3.toml", flaky_port).output().unwrap());
    drop(flaky);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().any(|l| l.starts_with("503 ")), "the proxy failed no request");

    let local_grid = std::fs::read(dir.path().join("out/grid.png")).unwrap();
    assert_eq!(get(moto_port, "sheets/grid.png"), local_grid, "the grid object is not the sheet drawn locally");
    let report = String::from_utf8(get(moto_port, "sheets/report.html")).unwrap();
    assert!(report.to_lowercase().starts_with("<!doctype html>") && report.trim_end().ends_with("</html>"), "{report}");
    assert!(report.contains("data:image/png;base64,"), "the report has no grid image");
    let keys: Vec<String> = boto(moto_port, LIST, &["files/"]).lines().map(String::from).collect();
    let want: Vec<String> = expected_names().iter().map(|n| format!("files/{n}.png")).collect();
    assert_eq!(keys, want);
    for i in [0, 31, ROWS - 1] {
        assert_eq!(get(moto_port, &format!("files/r{i:03}.png")), png(i as u8 * 4), "file {i}");
    }

    // A sink whose upload fails (no such bucket) fails the run, naming the URL, and leaves no
    // object; https:// is refused at the key.
    write(
        dir.path(),
        "nobucket.toml",
        sinks_pipeline("s3://data/in/rows.parquet", "s3://nobucket/grid.png", "report.html", "files"),
    );
    let out = run(dir.path(), "nobucket.toml", moto_port).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("s3://nobucket/grid.png"), "{}", text(&out));
    let buckets = boto(moto_port, "print('\\n'.join(b['Name'] for b in s3.list_buckets()['Buckets']))", &[]);
    assert_eq!(buckets.trim(), "data");
    for (grid, report, files, key) in [
        ("https://example.com/g.png", "r.html", "f", "path"),
        ("g.png", "https://example.com/r.html", "f", "path"),
        ("g.png", "r.html", "https://example.com/f/", "dir"),
    ] {
        write(dir.path(), "https.toml", sinks_pipeline("rows.parquet", grid, report, files));
        let out = pipe().args(["validate", "https.toml"]).current_dir(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("which pipe can read but not write"), "{}", text(&out));
        assert!(text(&out).contains(key), "{}", text(&out));
    }
}

#[test]
fn globs_in_s3_urls_list_the_literal_prefix_and_match_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = moto_with_input(dir.path()) else { return };
    let port = server.port;
    let local = dir.path().join("rows.parquet");
    boto(
        port,
        "for key in ['a.parquet', 'b.parquet', 'sub/c.parquet', 'sub/deep/d.parquet', 'e.csv.bak']:\n    \
         s3.upload_file(sys.argv[1], 'data', 'glob/' + key)",
        &[local.to_str().unwrap()],
    );
    let table = |pattern: &str| {
        format!(
            "[pipeline]\nname = \"g\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{pattern}\"\n\
             columns = [\"name\"]\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"rows.csv\"\n"
        )
    };
    let files = |pattern: &str| {
        format!(
            "[pipeline]\nname = \"g\"\n\n[[stage]]\nid = \"files\"\nuses = \"collect.files\"\npath = \"{pattern}\"\n\
             load = \"none\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"ids.csv\"\n"
        )
    };
    for (pattern, ids, rows) in [
        ("s3://data/glob/*.parquet", vec!["a.parquet", "b.parquet"], 2),
        ("s3://data/glob/**/*.parquet", vec!["a.parquet", "b.parquet", "sub/c.parquet", "sub/deep/d.parquet"], 4),
        ("s3://data/glob/{a,sub/c}.parquet", vec!["a.parquet", "sub/c.parquet"], 2),
        ("s3://data/glob/su?/*.parquet", vec!["sub/c.parquet"], 1),
    ] {
        write(dir.path(), "t.toml", table(pattern));
        succeeded(run(dir.path(), "t.toml", port).output().unwrap());
        let csv = std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap();
        assert_eq!(csv.lines().count(), rows * ROWS + 1, "{pattern}");
        write(dir.path(), "f.toml", files(pattern));
        succeeded(run(dir.path(), "f.toml", port).output().unwrap());
        let csv = std::fs::read_to_string(dir.path().join("out/ids.csv")).unwrap();
        let got: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(got, ids, "{pattern}");
    }
    write(dir.path(), "none.toml", table("s3://data/glob/*.arrow"));
    let out = run(dir.path(), "none.toml", port).output().unwrap();
    assert!(text(&out).contains("no object at s3://data/glob/*.arrow"), "{}", text(&out));
}

#[test]
fn validate_of_an_s3_path_whose_endpoint_does_not_answer_fails_naming_the_url_and_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = free_port();
    write(dir.path(), "p.toml", pipeline("s3://data/in/rows.parquet", "out"));
    for args in [["validate", "p.toml"], ["run", "p.toml"]] {
        let out = pipe_at(dir.path(), &args, port).output().unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        let said = text(&out);
        assert!(said.contains("s3://data/in/rows.parquet"), "{said}");
        assert!(said.contains("stage \"rows\"") || said.contains("stage `rows`"), "{said}");
    }
}
