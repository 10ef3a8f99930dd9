//! Catching a panic as an error, quietly. Decoders of untrusted files (a corrupt Parquet page, a
//! bad image) can panic deep inside a library; at the boundary of one file or batch that panic is
//! a per-item error, not a crash, so it must not print like one. The default panic hook prints
//! "thread ... panicked at" even when the panic is caught, so [`catch`] silences the hook for its
//! own thread while `f` runs, and only there: a panic anywhere else still prints as usual.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many [`catch`] calls this thread is inside; the hook is quiet while it is above 0.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

static INSTALL: Once = Once::new();

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message (e.g. "attempt to
/// shift left with overflow"), and the panic hook prints nothing for it.
///
/// `f` is treated as unwind safe: whatever it was changing when it panicked must be dropped by the
/// caller (a reader of a corrupt file, say), not used again.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    INSTALL.call_once(install_quiet_hook);
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| message(payload.as_ref()))
}

/// The text of a panic's payload: the message of `panic!("...")`, or "unknown panic" for a payload
/// that is not a string.
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Wraps the current hook in one that says nothing on a thread inside [`catch`].
fn install_quiet_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if DEPTH.try_with(|d| d.get()).unwrap_or(0) == 0 {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_value_comes_back_and_a_panic_becomes_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("bad page") }), Err("bad page".to_string()));
        let n = 3;
        assert_eq!(catch(|| -> u8 { panic!("row {n} is bad") }), Err("row 3 is bad".to_string()));
        assert_eq!(catch(|| std::panic::panic_any(5u8)), Err("unknown panic".to_string()));
    }

    #[test]
    fn nested_catches_stay_quiet_until_the_outer_one_returns() {
        let inner = catch(|| catch(|| -> u8 { panic!("inner") }));
        assert_eq!(inner, Ok(Err("inner".to_string())));
        assert_eq!(DEPTH.with(|d| d.get()), 0);
        let outer = catch(|| -> u8 {
            let _ = catch(|| 1);
            panic!("outer")
        });
        assert_eq!(outer, Err("outer".to_string()));
        assert_eq!(DEPTH.with(|d| d.get()), 0);
    }

    /// The one test that replaces the process's hook: it counts the panics of its own thread that
    /// reach the hook under the quiet wrapper, then puts the default hook back, wrapped again.
    #[test]
    fn the_hook_is_silent_inside_catch_and_speaks_outside() {
        let me = std::thread::current().id();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        INSTALL.call_once(|| {});
        panic::set_hook(Box::new(move |_| {
            if std::thread::current().id() == me {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }));
        install_quiet_hook();

        assert!(catch(|| -> u8 { panic!("caught quietly") }).is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a panic inside catch reached the hook");
        assert!(panic::catch_unwind(|| -> u8 { panic!("caught elsewhere") }).is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a panic outside catch did not reach the hook");

        let _ = panic::take_hook();
        install_quiet_hook();
    }
}
