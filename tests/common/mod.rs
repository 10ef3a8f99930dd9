//! Helpers for end-to-end tests of the `pipe` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod dataset;
pub mod s3;

/// A `pipe` command. Process plugins written in Python find `python3` in .pipe/venv first, where
/// `scripts/setup --python` installs pyarrow, the SDK and what the example plugins import.
pub fn pipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
    c.env_remove("ORT_DYLIB_PATH");
    let venv = repo().join(".pipe/venv/bin");
    if venv.is_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![venv];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).expect("PATH entries join"));
    }
    c
}

/// Runs `pipe` with args and returns its output.
pub fn pipe_output(args: &[&str], cwd: &Path) -> Output {
    pipe().args(args).current_dir(cwd).output().expect("pipe runs")
}

/// Writes `text` to `dir/name` (creating folders) and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// stdout and stderr together, for assertions.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads every row of a Parquet file into one batch.
pub fn read_parquet(path: &Path) -> arrow::record_batch::RecordBatch {
    let file = std::fs::File::open(path).unwrap();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let batches: Vec<_> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    let schema = batches.first().map_or(schema, |b| b.schema());
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// run.json of an output folder.
pub fn run_json(out_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap()
}

/// The Chromium binary, or None where it is not installed (CI installs it and requires it).
#[allow(dead_code)]
pub fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("CI must have Chromium for the report test: apt-get install chromium");
    }
    found
}

/// The DOM of an HTML page after headless Chromium loaded it (and ran its scripts), or None
/// where Chromium is not installed.
#[allow(dead_code)]
pub fn rendered_dom(page: &Path) -> Option<String> {
    let browser = chromium()?;
    let profile = tempfile::tempdir().unwrap();
    let rendered = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    Some(String::from_utf8_lossy(&rendered.stdout).into_owned())
}

/// Rows of a tensor column, as Parquet brings it back (a list) or as a fixed-size list.
pub fn tensor_rows(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<Vec<f32>> {
    use arrow::array::{Array, FixedSizeListArray, Float32Array, ListArray};
    let c = batch.column_by_name(column).unwrap();
    let (values, offsets): (Float32Array, Vec<usize>) = if let Some(l) = c.as_any().downcast_ref::<ListArray>() {
        (
            l.values().as_any().downcast_ref::<Float32Array>().unwrap().clone(),
            l.offsets().iter().map(|o| *o as usize).collect(),
        )
    } else {
        let l = c.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let w = l.value_length() as usize;
        (l.values().as_any().downcast_ref::<Float32Array>().unwrap().clone(), (0..=l.len()).map(|i| i * w).collect())
    };
    offsets.windows(2).map(|w| values.values()[w[0]..w[1]].to_vec()).collect()
}

/// A pipeline that makes digits: `[pipeline]` (name, seed, batches of 3), then collect.latent
/// (`count` per digit 0-9, 1x16x16) -> model.diffuse (the project's digits diffusion model,
/// DPM-Solver++ 2M, `steps`, guidance 1.5) -> model.onnx (the digits classifier: `probs`), then the
/// stages in `rest`.
pub fn digits_diffusion(name: &str, seed: u64, count: usize, steps: usize, rest: &str) -> String {
    let models = repo().join("examples/models");
    format!(
        r#"[pipeline]
name = "{name}"
seed = {seed}
batch_size = 3

[[stage]]
id = "labels"
uses = "collect.latent"
count = {count}
shape = [1, 16, 16]
labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

[[stage]]
id = "generate"
uses = "model.diffuse"
model = "{diffusion}"
sample_shape = [1, 16, 16]
scheduler = "dpm++2m"
steps = {steps}
latents = "z"
condition = "label"
uncond = 10
guidance_scale = 1.5

[[stage]]
id = "classify"
uses = "model.onnx"
model = "{classifier}"
inputs = {{ pixels = "sample" }}
outputs = {{ probs = "probs" }}
{rest}"#,
        diffusion = models.join("digits-diffusion/model.onnx").display(),
        classifier = models.join("digits-classifier/model.onnx").display(),
    )
}
