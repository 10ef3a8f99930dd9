//! Sink stages: `sink.table` (Parquet, CSV, JSONL, Arrow), `sink.files` (one file per row),
//! `sink.images` (one PNG/JPEG per row), `sink.grid` (a contact sheet) and `sink.report` (an HTML
//! page about the run). Every output is written
//! to a temporary name and renamed when complete, so a failed or killed run never leaves a
//! half-written file. Sinks pass their rows on, so they can be chained.

mod files;
mod font;
mod grid;
mod images;
mod raster;
mod report;
mod table;
mod template;

use pipeline::Plugin;

pub use files::SinkFiles;
pub use grid::SinkGrid;
pub use images::SinkImages;
pub use report::SinkReport;
pub use table::SinkTable;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(SinkTable), Box::new(SinkFiles), Box::new(SinkImages), Box::new(SinkGrid), Box::new(SinkReport)]
}
