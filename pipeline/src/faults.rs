//! A pause point for crash tests, compiled into debug builds only: with
//! `PIPE_TEST_PAUSE=POINT:N` and `PIPE_TEST_PAUSE_FILE=PATH` in the environment, the N-th time the
//! run reaches `POINT` (counted from 1) it creates PATH and sleeps, so a test can kill the process
//! at exactly that moment (inside a sink's commit, between its data and its log line). Release
//! builds compile it to nothing.

/// Marks that the run reached `point`; see the module docs.
#[cfg(debug_assertions)]
pub fn hit(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("PIPE_TEST_PAUSE") else { return };
    let Some((at, n)) = spec.split_once(':') else { return };
    if at != point {
        return;
    }
    let hits = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if n.parse::<u64>().is_ok_and(|n| n == hits) {
        if let Ok(path) = std::env::var("PIPE_TEST_PAUSE_FILE") {
            let _ = std::fs::write(path, point);
        }
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Marks that the run reached `point`: nothing in a release build.
#[cfg(not(debug_assertions))]
pub fn hit(_point: &str) {}
