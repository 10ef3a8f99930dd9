//! Preprocessing stages. `preprocess.sql` runs a polars SQL query over each batch (the table
//! `batch`), row by row: select, rename, compute and filter columns without leaving the stream.
//! `preprocess.image` decodes images and turns them into normalized Float32 tensors.
//! `preprocess.tokenize` turns text into fixed-length integer tensors of token ids.

mod image;
mod sql;
mod tokenize;

use pipeline::Plugin;

pub use image::PreprocessImage;
pub use sql::PreprocessSql;
pub use tokenize::PreprocessTokenize;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(PreprocessSql), Box::new(PreprocessImage), Box::new(PreprocessTokenize)]
}
