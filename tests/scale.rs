//! Memory stays flat with input size: 20,000 files through collect.files -> sink.table peak within
//! 1.5x of 2,000 files.

mod common;

use std::path::Path;

use common::{pipe, write};

/// Runs the pipeline in `dir` and returns the child's peak RSS in KiB.
#[allow(clippy::zombie_processes)] // wait4 reaps the child, which clippy cannot see
fn peak_rss_kib(dir: &Path) -> i64 {
    let child = pipe().args(["run", "p.toml", "--quiet"]).current_dir(dir).spawn().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "run failed with {status}");
    usage.ru_maxrss
}

fn make(dir: &Path, files: usize) {
    for i in 0..files {
        write(dir, &format!("data/{:03}/{i:06}.bin", i / 500), format!("{i:06} {}", "x".repeat(200 + i % 300)));
    }
    let pipeline = r#"[pipeline]
name = "scale"

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
load = "bytes"

[[stage]]
id = "save"
uses = "sink.table"
path = "files.parquet"
"#;
    write(dir, "p.toml", pipeline);
}

#[test]
fn twenty_thousand_files_run_in_flat_memory() {
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    make(small.path(), 2_000);
    make(large.path(), 20_000);
    let small_rss = peak_rss_kib(small.path());
    let large_rss = peak_rss_kib(large.path());
    let rows = common::read_parquet(&large.path().join("out/files.parquet")).num_rows();
    assert_eq!(rows, 20_000);
    let ratio = large_rss as f64 / small_rss as f64;
    eprintln!("peak RSS: 2,000 files {small_rss} KiB, 20,000 files {large_rss} KiB, ratio {ratio:.2}");
    assert!(ratio <= 1.5, "peak RSS grew {ratio:.2}x: {small_rss} KiB -> {large_rss} KiB");
}
