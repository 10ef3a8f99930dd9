//! A local S3-compatible server for end-to-end tests: moto's server (from `scripts/setup
//! --python`, in .pipe/venv) on a free port of 127.0.0.1, stopped when dropped, with boto3 to put,
//! list and get objects, and the `AWS_*` environment that points `pipe` at it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{repo, text};

/// A child process killed when dropped, even when the test panics.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python of .pipe/venv, where moto and boto3 are installed.
pub fn python() -> PathBuf {
    repo().join(".pipe/venv/bin/python3")
}

/// A port on 127.0.0.1 that no one listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether something listens on `port` within `timeout`.
pub fn wait_for(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// moto's S3 server, running until dropped.
pub struct S3 {
    _server: Killed,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl S3 {
    /// Starts the server, or says why it cannot run here (.pipe/venv or moto missing).
    pub fn start() -> Result<S3, String> {
        let python = python();
        if !python.exists() {
            return Err(format!("{} is missing (run scripts/setup --python)", python.display()));
        }
        let probe =
            Command::new(&python).args(["-c", "import moto.server, boto3"]).output().map_err(|e| e.to_string())?;
        if !probe.status.success() {
            return Err(format!("moto is not installed in .pipe/venv: {}", text(&probe).trim()));
        }
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("moto does not start: {e}"))?;
        let server = Killed(child);
        match wait_for(port, Duration::from_secs(30)) {
            true => Ok(S3 { _server: server, port }),
            false => Err(format!("moto did not listen on port {port} within 30 s")),
        }
    }

    /// The server, or `None` after printing why it cannot run here; under CI=true that is a
    /// failure instead (`what` names the test).
    pub fn start_or_skip(what: &str) -> Option<S3> {
        match S3::start() {
            Ok(s3) => Some(s3),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI must run {what}: {why}"),
            Err(why) => {
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    /// Points `command` (a `pipe` run) at this server, with test credentials, and clears any
    /// other `AWS_*` variable of the environment.
    pub fn env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        command
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
    }

    /// Runs Python with boto3 against the server; `script` sees `s3` (a client) and `sys.argv`.
    /// Returns its stdout; a failing script fails the test.
    pub fn boto(&self, script: &str, args: &[&str]) -> Vec<u8> {
        boto_at(self.port, script, args)
    }

    /// Makes the bucket `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        self.boto("s3.create_bucket(Bucket=sys.argv[1])", &[bucket]);
    }

    /// Uploads every file under the local folder `dir` as `bucket`/`prefix`/(its relative path).
    pub fn put_dir(&self, dir: &Path, bucket: &str, prefix: &str) {
        let script = "import os\nroot, bucket, prefix = sys.argv[1:4]\n\
                      for d, _, names in os.walk(root):\n    for n in names:\n        \
                      p = os.path.join(d, n)\n        \
                      s3.upload_file(p, bucket, prefix + os.path.relpath(p, root).replace(os.sep, '/'))";
        self.boto(script, &[dir.to_str().unwrap(), bucket, prefix]);
    }

    /// The keys under `prefix` in `bucket`, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = "keys = []\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], \
                      Prefix=sys.argv[2]):\n    keys += [o['Key'] for o in page.get('Contents', [])]\n\
                      print('\\n'.join(sorted(keys)))";
        let out = self.boto(script, &[bucket, prefix]);
        String::from_utf8(out).unwrap().lines().filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// The bytes of the object `key` in `bucket`.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.boto(
            "sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())",
            &[bucket, key],
        )
    }

    /// Downloads every object under `prefix` in `bucket` into the local folder `to`, each at its
    /// key relative to `prefix`.
    pub fn download(&self, bucket: &str, prefix: &str, to: &Path) {
        let script = "import os\nbucket, prefix, to = sys.argv[1:4]\n\
                      for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):\n    \
                      for o in page.get('Contents', []):\n        \
                      p = os.path.join(to, o['Key'][len(prefix):])\n        \
                      os.makedirs(os.path.dirname(p), exist_ok=True)\n        \
                      s3.download_file(bucket, o['Key'], p)";
        self.boto(script, &[bucket, prefix, to.to_str().unwrap()]);
    }

    /// Removes the object `key` from `bucket`.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.boto("s3.delete_object(Bucket=sys.argv[1], Key=sys.argv[2])", &[bucket, key]);
    }
}

/// Runs Python with boto3 against an S3 server at 127.0.0.1:`port` (moto, or a proxy in front of
/// it); `script` sees `s3` (a client) and `sys.argv`. Returns its stdout.
pub fn boto_at(port: u16, script: &str, args: &[&str]) -> Vec<u8> {
    let prelude = format!(
        "import sys, boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test')\n"
    );
    // os._exit: pyarrow's threads can abort an interpreter that exits normally after boto3.
    let script = format!("{prelude}{script}\nsys.stdout.flush()\nimport os\nos._exit(0)\n");
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out.stdout
}
