//! Sink stages: `sink.table` (Parquet, CSV, JSONL, Arrow) and `sink.files` (one file per row).
//! Every output is written to a temporary name and renamed when complete, so a failed or killed
//! run never leaves a half-written file. Sinks pass their rows on, so they can be chained.

mod files;
mod table;

use pipeline::Plugin;

pub use files::SinkFiles;
pub use table::SinkTable;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(SinkTable), Box::new(SinkFiles)]
}
