//! Corpus cases: tables.

use super::Case;

/// The cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
