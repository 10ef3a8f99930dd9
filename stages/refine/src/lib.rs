//! Refinement stages: judge generated content and keep what is good enough. `refine.score` turns a
//! tensor of probabilities or logits into one number per row, `refine.filter` drops rows that fail
//! a SQL condition, `refine.best-of` keeps the top rows per group, and `refine.iterate` re-runs
//! the rows that fall short through the stages that made them.

mod best_of;
mod filter;
mod iterate;
mod score;

use pipeline::Plugin;

pub use best_of::RefineBestOf;
pub use filter::RefineFilter;
pub use iterate::RefineIterate;
pub use score::RefineScore;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(RefineScore), Box::new(RefineFilter), Box::new(RefineBestOf), Box::new(RefineIterate)]
}
