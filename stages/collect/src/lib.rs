//! Source stages: `collect.files` (a folder, one row per file), `collect.table` (rows of CSV,
//! Parquet, JSONL or Arrow files) and `collect.latent` (seeded random tensors). All stream in batches of the pipeline's batch size, so a folder
//! of any size runs in bounded memory.

mod files;
mod latent;
mod table;

use pipeline::Plugin;

pub use files::CollectFiles;
pub use latent::CollectLatent;
pub use table::CollectTable;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(CollectFiles), Box::new(CollectTable), Box::new(CollectLatent)]
}
