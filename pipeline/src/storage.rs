//! Object storage: `s3://`, `gs://` and `az://` URLs (read and write) and `https://` / `http://`
//! (read), through the `object_store` crate. Stages read and write local files, so a remote
//! object is streamed into a local file before it is read ([`Remote::download`]), and a sink's
//! finished local file is uploaded after it is complete ([`Remote::upload`], a multipart upload
//! that is aborted on failure: an object appears only whole).
//!
//! Credentials come from each cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as
//! `object_store`'s builders read them); `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` point at an
//! S3-compatible server. Requests that fail transiently (5xx, timeouts) are retried with
//! exponential backoff.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use tokio::io::AsyncWriteExt;

use crate::{Error, Result};

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
    store: Arc<dyn ObjectStore>,
    /// The URL up to the key, e.g. `s3://bucket`.
    base: String,
    /// The key (an object) or the prefix (a folder), without a trailing `/`.
    key: ObjectPath,
    /// Whether the URL ended in `/` (a prefix).
    folder: bool,
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
/// (an `https://` URL cannot). An unknown scheme or a malformed URL is a config error naming
/// `key`.
pub fn open(key: &str, url: &str, write: bool) -> Result<Remote> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = scheme.to_ascii_lowercase();
    let bad = |message: String| Error::config(key, message);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(format!("\"{url}\" names no bucket or host")));
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
    };
    let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme.as_str() {
        "s3" | "s3a" => object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(host)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(host)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        "az" | "abfs" | "abfss" => object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(host)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        "https" | "http" if write => {
            return Err(bad(format!("\"{url}\" is an {scheme}:// URL, which pipe can read but not write"))
                .with_hint("write to a local path or to an s3://, gs:// or az:// URL"));
        }
        "https" | "http" => object_store::http::HttpBuilder::new()
            .with_url(format!("{scheme}://{host}"))
            .with_client_options(object_store::ClientOptions::new().with_allow_http(scheme == "http"))
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        _ => {
            return Err(bad(format!("\"{url}\": pipe does not know {scheme}:// URLs"))
                .with_hint("use a local path, or an s3://, gs://, az:// or https:// URL"));
        }
    };
    let store = built.map_err(|e| bad(format!("\"{url}\": {}", plain(&e))))?;
    let folder = path.is_empty() || path.ends_with('/');
    let key_path = ObjectPath::parse(path.trim_end_matches('/')).map_err(|e| bad(format!("\"{url}\": {e}")))?;
    Ok(Remote { store, base: format!("{scheme}://{host}"), key: key_path, folder })
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
    /// `/`), else every object under the prefix, sorted by key. A missing object or an empty
    /// prefix gives an empty list; a store that cannot be reached is an error naming the URL.
    pub fn list(&self) -> Result<Vec<Object>> {
        let url = self.url_of("");
        if !self.folder && !self.key.as_ref().is_empty() {
            match block_on(self.store.head(&self.key)) {
                Ok(meta) => return Ok(vec![Object { relative: String::new(), size: meta.size }]),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(failed("read", &url, &e)),
            }
        }
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let store = self.store.clone();
        let metas = block_on(async move {
            let mut out = Vec::new();
            let mut stream = store.list(prefix);
            while let Some(meta) = stream.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        })
        .map_err(|e| failed("list", &url, &e))?;
        let skip = self.key.as_ref().len() + usize::from(!self.key.as_ref().is_empty());
        let mut objects: Vec<Object> = metas
            .into_iter()
            .filter_map(|m| {
                let relative = m.location.as_ref().get(skip..)?.to_string();
                (!relative.is_empty()).then_some(Object { relative, size: m.size })
            })
            .collect();
        objects.sort_by(|a, b| a.relative.cmp(&b.relative));
        Ok(objects)
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

    /// Uploads the local file `from` as the object `relative` in parts; the object appears only
    /// when every part is sent (the upload is aborted on failure).
    pub fn upload(&self, from: &Path, relative: &str) -> Result<()> {
        let url = self.url_of(relative);
        let mut file = std::fs::File::open(from).map_err(|e| Error::io(from, e))?;
        let store = self.store.clone();
        let key = self.child(relative);
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
    fn staging_keeps_the_key_under_the_output_folder() {
        let got = staging_path(&Path::new("/out").join(STAGING), "s3://bucket/a/../b/c.parquet");
        assert_eq!(got, Path::new("/out/.pipe-remote/s3/bucket/a/b/c.parquet"));
    }
}
