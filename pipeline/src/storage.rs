//! Object storage: `s3://`, `gs://` and `az://` URLs (read and write) and `https://` / `http://`
//! (read), through the `object_store` crate. Stages read and write local files, so a remote
//! object is streamed into a local file before it is read ([`Remote::download`]), and a sink's
//! finished local file is uploaded after it is complete ([`Remote::upload`], a multipart upload
//! that is aborted on failure: an object appears only whole).
//!
//! Credentials come from each cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as
//! `object_store`'s builders read them); `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` point at an
//! S3-compatible server, `GOOGLE_SERVICE_ACCOUNT` (a key file with `gcs_base_url`) at a GCS
//! emulator, `AZURE_STORAGE_USE_EMULATOR` at Azurite. Transfers that fail transiently (5xx,
//! timeouts) are retried with exponential backoff for up to two minutes; listing, the first
//! request of a stage (and all that `pipe validate` sends), has a short connect timeout and a
//! small retry budget, so a store that does not answer is an error within seconds.
//!
//! A key with glob characters (`s3://bucket/data/*.parquet`, `**`, `{a,b}`, `?`, `[..]`) names
//! the objects under its longest literal prefix (whole `/`-separated parts) whose rest matches
//! the pattern, `*` staying within one part as in local globs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use tokio::io::AsyncWriteExt;

use crate::{BuildContext, Error, Result};

/// The folder under the output folder where remote objects are staged as local files.
pub const STAGING: &str = ".pipe-remote";

/// Bytes of each part of a multipart upload.
const PART_BYTES: usize = 8 << 20;

/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Whether `path` is a URL that this module handles (any `scheme://`).
pub fn is_url(path: &str) -> bool {
    crate::plugin::url_scheme(path).is_some()
}

/// An object or a prefix in a store: the store, and the key or prefix in it.
pub struct Remote {
    /// For transfers: long retries.
    store: Arc<dyn ObjectStore>,
    /// For listing and probing: a short connect timeout and few retries.
    probe: Arc<dyn ObjectStore>,
    /// The URL up to the key, e.g. `s3://bucket`.
    base: String,
    /// The key (an object) or the prefix (a folder), without a trailing `/`.
    key: ObjectPath,
    /// Whether the URL ended in `/` (a prefix), or had a glob after the prefix.
    folder: bool,
    /// The glob the keys under the prefix must match, when the URL had one.
    pattern: Option<globset::GlobMatcher>,
}

/// One object found under a prefix.
#[derive(Debug, Clone)]
pub struct Object {
    /// The key relative to the prefix (`""` for the object the URL names itself).
    pub relative: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The store and key of `url`, for the param `key`; `write` asks for a store that can be written
/// (an `https://` URL cannot, nor a glob). An unknown scheme or a malformed URL is a config error
/// naming `key`.
pub fn open(key: &str, url: &str, write: bool) -> Result<Remote> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = scheme.to_ascii_lowercase();
    let bad = |message: String| Error::config(key, message);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(format!("\"{url}\" names no bucket or host")));
    }
    if matches!(scheme.as_str(), "https" | "http") && write {
        return Err(bad(format!("\"{url}\" is an {scheme}:// URL, which pipe can read but not write"))
            .with_hint("write to a local path or to an s3://, gs:// or az:// URL"));
    }
    let (path, pattern) = split_glob(path);
    let pattern = match pattern {
        Some(_) if write => {
            return Err(bad(format!("\"{url}\" has glob characters, and a sink writes to one object or prefix"))
                .with_hint("name the object or the prefix (ending in `/`) to write"));
        }
        Some(glob) => Some(
            globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(format!("invalid glob \"{url}\": {e}")))?
                .compile_matcher(),
        ),
        None => None,
    };
    if !matches!(scheme.as_str(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "https" | "http") {
        return Err(bad(format!("\"{url}\": pipe does not know {scheme}:// URLs"))
            .with_hint("use a local path, or an s3://, gs://, az:// or https:// URL"));
    }
    let store = build(&scheme, host, &transfer_retry(), None).map_err(|e| bad(format!("\"{url}\": {e}")))?;
    let probe = build(&scheme, host, &probe_retry(), Some(PROBE_CONNECT_TIMEOUT))
        .map_err(|e| bad(format!("\"{url}\": {e}")))?;
    let folder = path.is_empty() || path.ends_with('/') || pattern.is_some();
    let key_path = ObjectPath::parse(path.trim_end_matches('/')).map_err(|e| bad(format!("\"{url}\": {e}")))?;
    Ok(Remote { store, probe, base: format!("{scheme}://{host}"), key: key_path, folder, pattern })
}

/// Whether a key part has glob characters.
fn is_glob(part: &str) -> bool {
    part.contains(['*', '?', '[', '{'])
}

/// A key split at its first part with glob characters: the literal prefix (ending in `/` when
/// there is a glob) and the glob after it.
fn split_glob(path: &str) -> (&str, Option<&str>) {
    let mut at = 0;
    for part in path.split('/') {
        if is_glob(part) {
            return (&path[..at], Some(&path[at..]));
        }
        at += part.len() + 1;
    }
    (path, None)
}

/// Seconds a listing or probing request waits for a connection.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Retries of a transfer: a few minutes of a flaky store are ridden out.
fn transfer_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
    }
}

/// Retries of a listing: enough for a store that fails a request now and then, few enough that
/// one that does not answer is reported within seconds.
fn probe_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(5),
    }
}

/// The store of the bucket, container or host `host` for `scheme`, with `retry`, and `connect`
/// as its connect timeout when given (the environment's settings otherwise).
fn build(
    scheme: &str,
    host: &str,
    retry: &RetryConfig,
    connect: Option<Duration>,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    use object_store::ClientConfigKey::ConnectTimeout;
    let timeout = connect.map(|t| format!("{}ms", t.as_millis()));
    let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(host).with_retry(retry.clone());
            if let Some(t) = &timeout {
                b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(ConnectTimeout), t);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        "gs" => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(host)
                .with_retry(retry.clone());
            if let Some(t) = &timeout {
                b = b.with_config(object_store::gcp::GoogleConfigKey::Client(ConnectTimeout), t);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        "az" | "abfs" | "abfss" => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(host)
                .with_retry(retry.clone());
            if let Some(t) = &timeout {
                b = b.with_config(object_store::azure::AzureConfigKey::Client(ConnectTimeout), t);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        "https" | "http" => {
            let mut options = object_store::ClientOptions::new().with_allow_http(scheme == "http");
            if let Some(t) = connect {
                options = options.with_connect_timeout(t);
            }
            object_store::http::HttpBuilder::new()
                .with_url(format!("{scheme}://{host}"))
                .with_client_options(options)
                .with_retry(retry.clone())
                .build()
                .map(|s| Arc::new(s) as _)
        }
        _ => return Err(format!("pipe does not know {scheme}:// URLs")),
    };
    built.map_err(|e| plain(&e))
}

impl Remote {
    /// The URL of `relative` under this key (`""`: the key itself).
    pub fn url_of(&self, relative: &str) -> String {
        let key = self.child(relative);
        format!("{}/{}", self.base, key.as_ref())
    }

    /// Whether the URL ended in `/`, naming a prefix rather than an object.
    pub fn is_folder(&self) -> bool {
        self.folder
    }

    fn child(&self, relative: &str) -> ObjectPath {
        match (self.key.as_ref(), relative) {
            (_, "") => self.key.clone(),
            ("", rel) => ObjectPath::from(rel),
            (key, rel) => ObjectPath::from(format!("{key}/{rel}")),
        }
    }

    /// The objects this URL names: the object itself when it exists (and the URL does not end in
    /// `/`), else every object under the prefix (those whose rest matches the URL's glob, when it
    /// has one), sorted by key. A missing object or an empty prefix gives an empty list; a store
    /// that cannot be reached is an error naming the URL, within seconds (few retries). Over
    /// http(s), a prefix is listed with WebDAV's PROPFIND; a server without it is an error that
    /// says so.
    pub fn list(&self) -> Result<Vec<Object>> {
        let url = self.url_of("");
        if !self.folder && !self.key.as_ref().is_empty() {
            match block_on(self.probe.head(&self.key)) {
                Ok(meta) => return Ok(vec![Object { relative: String::new(), size: meta.size }]),
                Err(object_store::Error::NotFound { .. }) if !self.base.starts_with("http") => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(failed("read", &url, &e)),
            }
        }
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let store = self.probe.clone();
        let metas = block_on(async move {
            let mut out = Vec::new();
            let mut stream = store.list(prefix);
            while let Some(meta) = stream.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        })
        .map_err(|e| match self.base.starts_with("http") {
            true => Error::msg(format!(
                "{url}/: cannot list it over {}: the server does not answer WebDAV PROPFIND ({}); \
                 an http(s):// URL without WebDAV names one object, not a prefix or a glob",
                self.base.split("://").next().unwrap_or("http"),
                plain(&e)
            )),
            false => failed("list", &url, &e),
        })?;
        let skip = self.key.as_ref().len() + usize::from(!self.key.as_ref().is_empty());
        let mut objects: Vec<Object> = metas
            .into_iter()
            .filter_map(|m| {
                let relative = m.location.as_ref().get(skip..)?.to_string();
                (!relative.is_empty()).then_some(Object { relative, size: m.size })
            })
            .filter(|o| self.pattern.as_ref().is_none_or(|glob| glob.is_match(&o.relative)))
            .collect();
        objects.sort_by(|a, b| a.relative.cmp(&b.relative));
        Ok(objects)
    }

    /// Whether the URL had a glob, which [`Remote::list`] matches the keys under its prefix
    /// against.
    pub fn has_glob(&self) -> bool {
        self.pattern.is_some()
    }

    /// Streams the object `relative` into the local file `to` (written beside it and renamed, so
    /// `to` is whole or absent). A missing object is an error naming its URL.
    pub fn download(&self, relative: &str, to: &Path) -> Result<()> {
        let url = self.url_of(relative);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let partial = partial_name(to);
        let store = self.store.clone();
        let key = self.child(relative);
        let target = partial.clone();
        let result = block_on(async move {
            let got = store
                .get(&key)
                .await
                .map_err(|e| ("read", e.to_string(), matches!(e, object_store::Error::NotFound { .. })))?;
            let mut file = tokio::fs::File::create(&target).await.map_err(|e| ("write", e.to_string(), false))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ("read", e.to_string(), false))?;
                file.write_all(&chunk).await.map_err(|e| ("write", e.to_string(), false))?;
            }
            file.flush().await.map_err(|e| ("write", e.to_string(), false))?;
            Ok::<_, (&str, String, bool)>(())
        });
        match result {
            Ok(()) => std::fs::rename(&partial, to).map_err(|e| Error::io(to, e)),
            Err((_, _, true)) => {
                let _ = std::fs::remove_file(&partial);
                Err(Error::msg(format!("{url}: no such object")))
            }
            Err((doing, message, false)) => {
                let _ = std::fs::remove_file(&partial);
                Err(Error::msg(format!("{url}: cannot {doing} it: {message}")))
            }
        }
    }

    /// Uploads the local file `from` as the object `relative`: a file of one part's size or less
    /// in one request, a larger one in parts; either way the object appears only whole (a
    /// multipart upload is aborted on failure).
    pub fn upload(&self, from: &Path, relative: &str) -> Result<()> {
        let url = self.url_of(relative);
        let mut file = std::fs::File::open(from).map_err(|e| Error::io(from, e))?;
        let store = self.store.clone();
        let key = self.child(relative);
        let size = file.metadata().map_err(|e| Error::io(from, e))?.len();
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| Error::io(from, e))?;
            return block_on(async move { store.put(&key, bytes.into()).await.map(|_| ()) })
                .map_err(|e| failed("write", &url, &e));
        }
        block_on(async move {
            let upload = store.put_multipart(&key).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = match std::io::Read::read(&mut file, &mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(object_store::Error::Generic { store: "local file", source: Box::new(e) });
                    }
                };
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Err(e);
                }
                writer.write(&buffer[..n]);
            }
            writer.finish().await.map(|_| ())
        })
        .map_err(|e| failed("write", &url, &e))
    }

    /// Uploads every file under the local folder `dir` (names starting with `.` left out), each
    /// as the object of its path relative to `dir`, in sorted order.
    pub fn upload_tree(&self, dir: &Path) -> Result<usize> {
        let mut files: Vec<PathBuf> = Vec::new();
        collect_files(dir, &mut files).map_err(|e| Error::io(dir, e))?;
        files.sort();
        for file in &files {
            let relative = file.strip_prefix(dir).unwrap_or(file).to_string_lossy().replace('\\', "/");
            self.upload(file, &relative)?;
        }
        Ok(files.len())
    }
}

/// Where a sink writes when its output is a URL: the local file or folder it writes as it would
/// any output (under the output folder's [`STAGING`]`/out/`, the same path every run, so a resumed
/// run finds what the run before it wrote), and the store it is uploaded to once finished.
pub struct Upload {
    /// The staged local file or folder.
    pub local: PathBuf,
    /// The object or prefix the URL names.
    pub remote: Remote,
}

/// The [`Upload`] of the URL `url` given as the param `key`; a URL that cannot be written is a
/// config error naming `key`.
pub fn upload_target(output_dir: &Path, key: &str, url: &str) -> Result<Upload> {
    let remote = open(key, url, true)?;
    let local = staging_path(&output_dir.join(STAGING).join("out"), url);
    Ok(Upload { local, remote })
}

/// Where a sink writes its param `key`, `path`: the local path under the output folder, or, for
/// a URL, the staged local path and the [`Upload`] that sends it once finished. A URL that
/// cannot be written (`https://`, a glob, an unknown scheme) is a config error naming `key`.
pub fn sink_target(cx: &BuildContext, key: &str, path: &str) -> Result<(PathBuf, Option<Upload>)> {
    match is_url(path) {
        true => {
            let upload = upload_target(&cx.output_dir, key, path)?;
            Ok((upload.local.clone(), Some(upload)))
        }
        false => Ok((cx.output_path(key, path)?, None)),
    }
}

/// The local file or folder under the staging folder `staging` (e.g. the output folder's
/// [`STAGING`]) where the object or prefix of `url` is staged.
pub fn staging_path(staging: &Path, url: &str) -> PathBuf {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let mut path = staging.join(scheme.to_ascii_lowercase());
    for part in rest.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
        path.push(part);
    }
    path
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn partial_name(to: &Path) -> PathBuf {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!(".{name}.download-{}", std::process::id()))
}

fn failed(doing: &str, url: &str, e: &object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::msg(format!("{url}: no such object or bucket")),
        e => Error::msg(format!("{url}: cannot {doing} it: {}", plain(e))),
    }
}

/// An `object_store` error's message on one line.
fn plain(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// Runs a future to completion on the shared I/O runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pipe-storage")
                .enable_all()
                .build()
                .expect("the storage runtime starts")
        })
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_cannot_be_written_and_unknown_schemes_are_refused() {
        let e = open("path", "https://example.com/a.parquet", true).err().unwrap().to_string();
        assert!(e.contains("can read but not write"), "{e}");
        let e = open("dir", "ftp://host/a", false).err().unwrap().to_string();
        assert!(e.contains("does not know ftp:// URLs"), "{e}");
        assert!(open("path", "https://example.com/a.parquet", false).is_ok());
    }

    #[test]
    fn a_glob_is_split_at_its_first_part_with_a_pattern_and_cannot_be_written() {
        assert_eq!(split_glob("data/*.parquet"), ("data/", Some("*.parquet")));
        assert_eq!(split_glob("a/b/**/x-{1,2}.csv"), ("a/b/", Some("**/x-{1,2}.csv")));
        assert_eq!(split_glob("*.csv"), ("", Some("*.csv")));
        assert_eq!(split_glob("a/b.csv"), ("a/b.csv", None));
        let remote = open("path", "s3://bucket/data/*.parquet", false).unwrap();
        assert!(remote.has_glob() && remote.is_folder());
        assert_eq!(remote.url_of(""), "s3://bucket/data");
        let e = open("path", "s3://bucket/data/*.parquet", true).err().unwrap().to_string();
        assert!(e.contains("has glob characters"), "{e}");
    }

    #[test]
    fn staging_keeps_the_key_under_the_output_folder() {
        let got = staging_path(&Path::new("/out").join(STAGING), "s3://bucket/a/../b/c.parquet");
        assert_eq!(got, Path::new("/out/.pipe-remote/s3/bucket/a/b/c.parquet"));
    }
}
