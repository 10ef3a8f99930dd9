//! Values one stage's thread publishes and others wait for: the artifacts of a train stage, and
//! the schemas of stages built only once those exist. A key that is closed without a value (its
//! stage failed, or ended without publishing) wakes every waiter with `None`.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// Published values by key.
#[derive(Debug)]
pub(crate) struct Board<T> {
    slots: Mutex<HashMap<String, Option<T>>>,
    changed: Condvar,
}

impl<T: Clone> Default for Board<T> {
    fn default() -> Self {
        Self { slots: Mutex::new(HashMap::new()), changed: Condvar::new() }
    }
}

impl<T: Clone> Board<T> {
    /// Publishes `key`'s value (the first one stays).
    pub(crate) fn publish(&self, key: &str, value: T) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_string()).or_insert(Some(value));
        self.changed.notify_all();
    }

    /// Closes `key` without a value, unless it has one.
    pub(crate) fn close(&self, key: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_string()).or_insert(None);
        self.changed.notify_all();
    }

    /// Waits for `key`: its value, or `None` when it was closed without one.
    #[cfg(test)]
    pub(crate) fn wait(&self, key: &str) -> Option<T> {
        self.wait_until(key, std::time::Duration::from_secs(3600), || false)
    }

    /// Waits for `key`, looking every `every` whether to give up (`None`).
    pub(crate) fn wait_until(&self, key: &str, every: std::time::Duration, give_up: impl Fn() -> bool) -> Option<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(slot) = slots.get(key) {
                return slot.clone();
            }
            if give_up() {
                return None;
            }
            slots = self.changed.wait_timeout(slots, every).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The value of `key`, if published already.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<T> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_wake_on_a_value_or_a_close() {
        let board: Arc<Board<u32>> = Arc::default();
        let b = board.clone();
        let waiter = std::thread::spawn(move || (b.wait("fit"), b.wait("gone")));
        std::thread::sleep(std::time::Duration::from_millis(20));
        board.publish("fit", 7);
        board.close("gone");
        board.close("fit");
        assert_eq!(waiter.join().unwrap(), (Some(7), None));
        assert_eq!(board.get("fit"), Some(7));
    }
}
