//! The content-addressed cache: training artifacts (and, later, per-row results) stored by the
//! hash of everything that made them, under `[pipeline] cache_dir` (default `.pipe/cache` beside
//! the pipeline file; `PIPE_CACHE_DIR` overrides).
//!
//! An entry is a folder `<root>/<kind>/<key>/` holding its files and a `meta.json`. It is made in
//! a scratch folder under `<root>/tmp/`, synced, and renamed into place, so an entry exists whole
//! or not at all: a run killed while training leaves a scratch folder, which `pipe cache prune`
//! removes, and never a half-written entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// The folder holding an entry's description.
const META: &str = "meta.json";

/// The cache at one root folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// One entry, as `pipe cache list` shows it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// What made it ("train").
    pub kind: String,
    /// Its key.
    pub key: String,
    /// Its folder.
    pub path: PathBuf,
    /// Bytes in all.
    pub bytes: u64,
    /// When it was made.
    pub modified: SystemTime,
    /// Its meta.json.
    pub meta: serde_json::Value,
}

impl Cache {
    /// The cache at `root` (made when first written).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The cache folder for a pipeline file in `pipeline_dir` with `cache_dir` (relative to that
    /// folder): `PIPE_CACHE_DIR` when set, else `cache_dir`; made absolute, since a trainer is
    /// handed paths in it and runs in the pipeline file's folder, not pipe's.
    pub fn folder(pipeline_dir: &Path, cache_dir: &str) -> PathBuf {
        let dir = match std::env::var_os("PIPE_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => pipeline_dir.join(cache_dir),
        };
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// Its root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// The folder of the complete entry `kind`/`key`, if the cache holds it.
    pub fn get(&self, kind: &str, key: &str) -> Option<PathBuf> {
        let path = self.entry_path(kind, key);
        path.join(META).is_file().then_some(path)
    }

    /// A fresh, empty scratch folder under `<root>/tmp/`, for work in progress. Scratch folders of
    /// runs that are gone (killed) are removed first, so their dataset copies do not pile up.
    pub fn scratch(&self) -> Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        self.remove_dead_scratch();
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = tmp.join(name);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Makes the entry `kind`/`key`: `fill` writes its files into a scratch folder, then
    /// `meta.json` is written, everything synced, and the folder renamed into place. When the entry
    /// appeared meanwhile (another run made the same thing), that one is kept. Returns its folder.
    pub fn put(
        &self,
        kind: &str,
        key: &str,
        meta: serde_json::Value,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let scratch = self.scratch()?;
        let result = (|| {
            fill(&scratch)?;
            let meta_path = scratch.join(META);
            let text = serde_json::to_string_pretty(&meta).map_err(|e| Error::msg(format!("meta.json: {e}")))?;
            std::fs::write(&meta_path, text).map_err(|e| Error::io(&meta_path, e))?;
            sync_tree(&scratch)?;
            let target = self.entry_path(kind, key);
            let parent = target.parent().expect("an entry has a kind folder");
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            match std::fs::rename(&scratch, &target) {
                Ok(()) => {}
                Err(_) if target.join(META).is_file() => return Ok(target),
                Err(e) => return Err(Error::io(&target, e)),
            }
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
            Ok(target)
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Records that `stage` of `pipeline` last made entry `kind`/`key`.
    pub fn remember(&self, kind: &str, pipeline: &str, stage: &str, key: &str) -> Result<()> {
        let path = self.latest_path(kind, pipeline, stage);
        let parent = path.parent().expect("a latest file has a folder");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        crate::atomic::write_atomic(&path, key.as_bytes())
    }

    /// The entry `stage` of `pipeline` last made, if the cache still holds it.
    pub fn latest(&self, kind: &str, pipeline: &str, stage: &str) -> Option<PathBuf> {
        let key = std::fs::read_to_string(self.latest_path(kind, pipeline, stage)).ok()?;
        self.get(kind, key.trim())
    }

    fn latest_path(&self, kind: &str, pipeline: &str, stage: &str) -> PathBuf {
        let name = |s: &str| {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect::<String>()
        };
        self.root.join("latest").join(kind).join(name(pipeline)).join(name(stage))
    }

    /// Every complete entry, oldest first.
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        let Ok(kinds) = std::fs::read_dir(&self.root) else { return Ok(out) };
        for kind in kinds.flatten() {
            let kind_name = kind.file_name().to_string_lossy().to_string();
            if kind_name == "tmp" || kind_name == "latest" || !kind.path().is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(kind.path()).map_err(|e| Error::io(kind.path(), e))?.flatten() {
                let path = entry.path();
                let meta_path = path.join(META);
                let Ok(text) = std::fs::read_to_string(&meta_path) else { continue };
                let meta = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                let modified =
                    std::fs::metadata(&meta_path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(EntryInfo {
                    kind: kind_name.clone(),
                    key: entry.file_name().to_string_lossy().to_string(),
                    bytes: tree_bytes(&path),
                    path,
                    modified,
                    meta,
                });
            }
        }
        out.sort_by_key(|e| e.modified);
        Ok(out)
    }

    /// Removes entries older than `older_than`, then the oldest until the rest fit in `max_bytes`,
    /// and every scratch folder left by a run that is gone. Returns what was removed.
    pub fn prune(&self, older_than: Option<Duration>, max_bytes: Option<u64>) -> Result<Vec<EntryInfo>> {
        let now = SystemTime::now();
        let mut entries = self.list()?;
        let mut removed = Vec::new();
        entries.retain(|e| {
            let old = older_than.is_some_and(|age| now.duration_since(e.modified).unwrap_or_default() > age);
            if old {
                removed.push(e.clone());
            }
            !old
        });
        if let Some(max) = max_bytes {
            let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
            for e in entries {
                if total <= max {
                    break;
                }
                total -= e.bytes;
                removed.push(e);
            }
        }
        for e in &removed {
            std::fs::remove_dir_all(&e.path).map_err(|err| Error::io(&e.path, err))?;
        }
        self.remove_dead_scratch();
        Ok(removed)
    }

    /// Removes the scratch folders of processes that are gone (each is named after its process).
    fn remove_dead_scratch(&self) {
        if let Ok(tmp) = std::fs::read_dir(self.root.join("tmp")) {
            for t in tmp.flatten() {
                let pid = t.file_name().to_string_lossy().split('-').next().and_then(|p| p.parse::<u32>().ok());
                let alive = pid.is_some_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(t.path());
                }
            }
        }
    }
}

/// Syncs every file under `dir`, and the folders themselves.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        }
    }
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Bytes of every file under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { tree_bytes(&p) } else { e.metadata().map_or(0, |m| m.len()) }
        })
        .sum()
}

/// "1.5 MB", "320 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parses a size such as "500MB", "2G", "10k" or a number of bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().trim_end_matches('b') {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        _ => return None,
    };
    (number >= 0.0).then_some((number * factor) as u64)
}

/// Parses an age such as "7d", "12h", "30m" or "90s".
pub fn parse_age(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_folder_of_a_relative_pipeline_path_is_absolute() {
        assert!(Cache::folder(Path::new("examples/train-vae"), ".pipe/cache").is_absolute());
    }

    #[test]
    fn an_entry_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        assert!(cache.get("train", "k1").is_none());
        let failed = cache.put("train", "k1", serde_json::json!({}), |d| {
            std::fs::write(d.join("model.onnx"), b"half").map_err(|e| Error::io(d, e))?;
            Err(Error::msg("the trainer failed"))
        });
        assert!(failed.is_err());
        assert!(cache.get("train", "k1").is_none(), "a failed fill leaves no entry");
        let entry = cache
            .put("train", "k1", serde_json::json!({"stage": "fit"}), |d| {
                std::fs::write(d.join("model.onnx"), b"whole").map_err(|e| Error::io(d, e))
            })
            .unwrap();
        assert_eq!(std::fs::read(entry.join("model.onnx")).unwrap(), b"whole");
        assert_eq!(cache.get("train", "k1"), Some(entry.clone()));
        cache.remember("train", "p", "fit", "k1").unwrap();
        assert_eq!(cache.latest("train", "p", "fit"), Some(entry));
        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].kind.as_str(), listed[0].key.as_str()), ("train", "k1"));
        assert_eq!(listed[0].meta["stage"], "fit");
        // Nothing is left in tmp by put.
        assert_eq!(std::fs::read_dir(dir.path().join("cache/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn prune_by_size_removes_the_oldest_and_dead_scratch_folders() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        for key in ["a", "b"] {
            cache
                .put("train", key, serde_json::json!({}), |d| {
                    std::fs::write(d.join("f"), vec![0u8; 1000]).map_err(|e| Error::io(d, e))
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::create_dir_all(dir.path().join("tmp/999999999-1-0")).unwrap();
        let removed = cache.prune(None, Some(1500)).unwrap();
        assert_eq!(removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(cache.get("train", "b").is_some());
        assert!(!dir.path().join("tmp/999999999-1-0").exists());
        assert_eq!(cache.prune(Some(Duration::from_secs(0)), None).unwrap().len(), 1);
    }

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_bytes("500MB"), Some(500_000_000));
        assert_eq!(parse_bytes("2g"), Some(2_000_000_000));
        assert_eq!(parse_bytes("10"), Some(10));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Some(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("soon"), None);
        assert_eq!(human_bytes(1500), "1.5 kB");
    }
}
