//! `refine.iterate`: rows that fail `until` are sent back through the upstream span of stages
//! (for example generate -> classify -> score) with the next round's random streams, at most
//! `max_rounds` times in all, and the best (or last) attempt is kept.
//!
//! The plugin checks its params and says how to judge an attempt; the loop itself is a node of the
//! plan ([`pipeline::retry`]): each stage of the span exists once, a failing row goes back through
//! the same instances, and its result depends only on the row and the seed: round k of stage S
//! draws from the stream (seed, S, row id, k). Rows leave in the order they came. The span's
//! stages must be row-wise transforms (one output row per input row, keeping `id`): model.diffuse
//! with count = 1, model.onnx, refine.score, preprocess.sql ...; `pipe validate` refuses others.

use arrow::array::{Array, Float64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::retry::{Judge, Retry};
use pipeline::sql::{SqlQuery, filter_mask};
use pipeline::{BuildContext, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `refine.iterate` plugin.
pub struct RefineIterate;

/// Which attempt a row that never passes keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The attempt with the highest `score` (the earliest on ties).
    #[default]
    Best,
    /// The last attempt.
    Last,
}

/// Params of `refine.iterate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IterateParams {
    /// Ids of the contiguous upstream stages to re-run, in order, ending with the stage just
    /// before this one.
    pub stages: Vec<String>,
    /// A SQL boolean expression over the row; rows where it holds are done.
    pub until: String,
    /// Attempts in all, the first included (1 = no retries).
    #[serde(default = "default_rounds")]
    pub max_rounds: u32,
    /// Which attempt a row that never passes keeps.
    #[serde(default)]
    pub keep: Keep,
    /// The numeric column that ranks attempts for keep = "best".
    #[serde(default = "default_score")]
    pub score: String,
}

fn default_rounds() -> u32 {
    3
}

fn default_score() -> String {
    "score".to_string()
}

impl Plugin for RefineIterate {
    fn name(&self) -> &'static str {
        "refine.iterate"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Re-runs the rows that fail `until` through the named upstream stages with the next \
             round's seed, up to `max_rounds` attempts, keeping the best (by `score`) or the last \
             attempt, and writes how many attempts each row took. Rows that pass go on at once. \
             run.json counts the rows that passed on the first try, after retries, and never.",
        )
        .params::<IterateParams>()
        .reads("<score>", "numeric", "ranks attempts (keep = \"best\")")
        .writes("attempts", "Int32", "attempts the row took, 1 if it passed at once")
        .example(
            "[[stage]]\nid = \"retry\"\nuses = \"refine.iterate\"\nstages = [\"generate\", \"classify\", \"score\"]\n\
             until = \"score >= 0.9\"\nmax_rounds = 4",
        )
    }

    fn retries(&self, params: &Params) -> Vec<String> {
        params.parse::<IterateParams>().map(|p| p.stages).unwrap_or_default()
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: IterateParams = params.parse()?;
        if p.max_rounds == 0 {
            return Err(Error::config("max_rounds", "max_rounds must be at least 1 (the first attempt)"));
        }
        if p.stages.is_empty() {
            return Err(Error::config("stages", "name the stages to re-run").with_hint(
                "e.g. stages = [\"generate\", \"classify\", \"score\"], ending with the stage before this one",
            ));
        }
        let query = format!("SELECT ({}) AS keep FROM batch", p.until);
        let plan = SqlQuery::plan(&query, input).map_err(|e| Error::config("until", e.to_string()))?;
        if plan.output_schema().field(0).data_type() != &DataType::Boolean {
            return Err(Error::config("until", format!("`{}` is not a boolean", p.until))
                .with_hint("write a condition, e.g. score >= 0.9"));
        }
        if p.keep == Keep::Best {
            let field = pipeline::columns::require(input, "score", &p.score, &[])?;
            if !field.data_type().is_numeric() {
                return Err(Error::config(
                    "score",
                    format!("column `{}` is {}, not a number", p.score, field.data_type()),
                ));
            }
        }
        let schema = pipeline::columns::with_outputs(input, vec![Field::new("attempts", DataType::Int32, false)]);
        let keep = match p.keep {
            Keep::Best => pipeline::retry::Keep::Best,
            Keep::Last => pipeline::retry::Keep::Last,
        };
        let judge = Until { until: p.until, score: (p.keep == Keep::Best).then_some(p.score) };
        Ok(Stage::Retry(Retry::new(p.stages, p.max_rounds, keep, schema, Box::new(judge))))
    }
}

/// Judges an attempt by `until`, and ranks it by `score` (keep = "best").
struct Until {
    until: String,
    score: Option<String>,
}

impl Judge for Until {
    fn judge(&self, batch: &RecordBatch) -> Result<Vec<(bool, f64)>> {
        let passed = filter_mask(&self.until, batch)?;
        let scores: Vec<f64> = match &self.score {
            None => vec![f64::NAN; batch.num_rows()],
            Some(name) => {
                let score = arrow::compute::cast(pipeline::columns::column(batch, name)?, &DataType::Float64)?;
                let score = score.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
                (0..score.len()).map(|i| if score.is_null(i) { f64::NAN } else { score.value(i) }).collect()
            }
        };
        Ok(scores.into_iter().enumerate().map(|(i, s)| (passed.value(i), s)).collect())
    }
}
