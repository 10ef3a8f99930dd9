//! The output schemas plugins declared, kept between runs in the pipeline's cache folder, so that
//! a run can build the stages after a plugin while the plugin is still starting (a Python plugin
//! spends most of its first 0.2 s importing pyarrow). The key is everything the declaration may
//! depend on that pipe can see: the command and its program files' contents, the folder, the
//! environment added, the params, the input schema and the protocol. What it cannot see (a module
//! the program imports) is covered by the check at first use: the plugin's own answer must match,
//! or the run stops before any row moves, naming the stage, with the kept declaration updated.
//! The plugin's promises (row-wise, deterministic) are kept with the schema, as metadata of the
//! stored schema.

use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::{Schema, SchemaRef};

use crate::conversation::{Declaration, Program, Promises};
use crate::wire;

/// The stored schema's metadata keys that hold the promises.
const ROW_WISE: &str = "pipe.process.row_wise";
const DETERMINISTIC: &str = "pipe.process.deterministic";

/// Program files larger than this are keyed by their size and modification time, not read.
const MAX_HASHED_FILE: u64 = 16 << 20;

/// Where one stage's declaration is kept.
pub(crate) struct KeptDeclaration {
    path: PathBuf,
}

impl KeptDeclaration {
    /// The place for `program`'s declaration for `input`, under `cache_dir`.
    pub fn new(cache_dir: &Path, program: &Program, input: &SchemaRef) -> Option<Self> {
        let mut h = blake3::Hasher::new();
        let mut part = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        // "with promises": declarations kept before promises existed are not read as promising none.
        part(b"pipe process declaration with promises");
        part(&wire::PROTOCOL.to_le_bytes());
        let spawn = &program.spawn;
        part(spawn.cwd.as_os_str().as_encoded_bytes());
        for arg in &spawn.argv {
            part(arg.as_bytes());
            let file = spawn.cwd.join(arg);
            match std::fs::metadata(&file) {
                Ok(m) if m.is_file() && m.len() <= MAX_HASHED_FILE => part(&std::fs::read(&file).ok()?),
                Ok(m) if m.is_file() => {
                    let modified = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
                    part(&m.len().to_le_bytes());
                    part(&modified.as_nanos().to_le_bytes());
                }
                _ => part(b"-"),
            }
        }
        for (k, v) in &spawn.env {
            part(k.as_bytes());
            part(v.as_bytes());
        }
        part(serde_json::to_string(&program.params).ok()?.as_bytes());
        part(&wire::encode(Default::default(), Some((input, &[]))).ok()?);
        let key = h.finalize().to_hex();
        Some(Self { path: cache_dir.join("process").join(format!("{}.arrows", &key[..32])) })
    }

    /// The file it is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The declaration kept, if there is one that reads.
    pub fn load(&self) -> Option<Declaration> {
        let bytes = std::fs::read(&self.path).ok()?;
        let (schema, _) = wire::decode(Buffer::from_vec(bytes)).ok()?;
        let mut metadata = schema.metadata().clone();
        let mut flag = |key: &str| metadata.remove(key).is_some_and(|v| v == "true");
        let promises = Promises { row_wise: flag(ROW_WISE), deterministic: flag(DETERMINISTIC) };
        let schema = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
        Some(Declaration { schema, promises })
    }

    /// Keeps `declared`; a cache folder that cannot be written only means the next run waits for
    /// the plugin again.
    pub fn store(&self, declared: &Declaration) {
        let mut metadata: HashMap<String, String> = declared.schema.metadata().clone().into();
        metadata.insert(ROW_WISE.into(), declared.promises.row_wise.to_string());
        metadata.insert(DETERMINISTIC.into(), declared.promises.deterministic.to_string());
        let schema = Arc::new(Schema::new_with_metadata(declared.schema.fields().clone(), metadata));
        let Ok(bytes) = wire::encode(Default::default(), Some((&schema, &[]))) else { return };
        // The header line first, then the IPC stream: keep the stream only.
        let Some(start) = bytes.iter().position(|&b| b == b'\n') else { return };
        let Some(dir) = self.path.parent() else { return };
        let tmp = dir.join(format!(".{}.tmp-{}", std::process::id(), rand_suffix()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, &bytes[start + 1..]))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// A suffix that keeps two threads of one process from sharing a temporary file name.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
