//! `refine.best-of`: the `keep` best rows of each group by a score column. Only the current best
//! rows of each group are held (as one-row slices), so memory grows with groups x keep, not with
//! the stream; they are emitted when the stream ends, group by group in order of first appearance,
//! best first. Ties keep the earlier row.

use std::collections::HashMap;

use arrow::array::{Array, Float64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `refine.best-of` plugin.
pub struct RefineBestOf;

/// Which end of the score is best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Highest score first.
    #[default]
    Desc,
    /// Lowest score first.
    Asc,
}

/// Params of `refine.best-of`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BestOfParams {
    /// The column whose values form the groups; one group for all rows when absent.
    pub group_by: Option<String>,
    /// The numeric score column.
    #[serde(default = "default_score")]
    pub score: String,
    /// Rows kept per group.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Which end of the score is best.
    #[serde(default)]
    pub order: Order,
}

fn default_score() -> String {
    "score".to_string()
}

fn default_keep() -> usize {
    1
}

impl Plugin for RefineBestOf {
    fn name(&self) -> &'static str {
        "refine.best-of"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Keeps the `keep` best rows of each group by a score, emitted when the stream ends, group \
             by group (in order of first appearance), best first. Rows not kept count as filtered; a \
             null or NaN score never wins. It needs every row, so it is refused under `pipe run \
             --shard`: keep the best from the merged output in an unsharded run.",
        )
        .params::<BestOfParams>()
        .reads("<score>", "numeric", "the score")
        .reads("<group_by>", "any", "the group")
        .example(
            "[[stage]]\nid = \"best\"\nuses = \"refine.best-of\"\ngroup_by = \"label\"\nscore = \"score\"\nkeep = 4",
        )
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        pipeline::shard::refuse_under_shard(
            cx,
            self.name(),
            "leave it out of the sharded pipeline, and keep the best rows of the merged output in an unsharded \
             run (collect.table over the shards' table parts, then refine.best-of)",
        )?;
        let p: BestOfParams = params.parse()?;
        if p.keep == 0 {
            return Err(Error::config("keep", "keep must be at least 1"));
        }
        let field = pipeline::columns::require(input, "score", &p.score, &[])?;
        if !field.data_type().is_numeric() {
            return Err(Error::config(
                "score",
                format!("column `{}` is {}, not a number", field.name(), field.data_type()),
            ));
        }
        if let Some(group) = &p.group_by {
            pipeline::columns::require(input, "group_by", group, &[])?;
        }
        Ok(Stage::transform(BestOfStage {
            params: p,
            schema: input.clone(),
            groups: Vec::new(),
            index: HashMap::new(),
            seen: 0,
        }))
    }
}

/// A held row: its score (NaN for none), arrival number and the one-row slice.
type Held = (f64, u64, RecordBatch);

struct BestOfStage {
    params: BestOfParams,
    schema: SchemaRef,
    groups: Vec<Vec<Held>>,
    index: HashMap<String, usize>,
    seen: u64,
}

impl BestOfStage {
    /// True when `a` ranks before `b`.
    fn better(&self, a: &Held, b: &Held) -> bool {
        match (a.0.is_nan(), b.0.is_nan()) {
            (false, true) => true,
            (true, false) => false,
            (true, true) => a.1 < b.1,
            (false, false) if a.0 == b.0 => a.1 < b.1,
            _ => (a.0 > b.0) == (self.params.order == Order::Desc),
        }
    }
}

impl Transform for BestOfStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let score = arrow::compute::cast(pipeline::columns::column(&batch, &self.params.score)?, &DataType::Float64)?;
        let score = score.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
        let options = FormatOptions::default();
        let group_column = match &self.params.group_by {
            Some(name) => Some(pipeline::columns::column(&batch, name)?.clone()),
            None => None,
        };
        let formatter = group_column.as_ref().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).transpose()?;
        let mut dropped = 0u64;
        for row in 0..batch.num_rows() {
            let key = formatter.as_ref().map_or(String::new(), |f| f.value(row).to_string());
            let g = *self.index.entry(key).or_insert_with(|| {
                self.groups.push(Vec::new());
                self.groups.len() - 1
            });
            let value = if score.is_null(row) { f64::NAN } else { score.value(row) };
            let held: Held = (value, self.seen, batch.slice(row, 1));
            self.seen += 1;
            let mut group = std::mem::take(&mut self.groups[g]);
            let at = group.iter().position(|h| self.better(&held, h)).unwrap_or(group.len());
            if at < self.params.keep {
                group.insert(at, held);
                if group.len() > self.params.keep {
                    group.pop();
                    dropped += 1;
                }
            } else {
                dropped += 1;
            }
            self.groups[g] = group;
        }
        cx.count_filtered(dropped);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        let rows: Vec<RecordBatch> = self.groups.drain(..).flatten().map(|(_, _, b)| b).collect();
        if rows.is_empty() {
            return Ok(());
        }
        for chunk in rows.chunks(1024) {
            out.emit(arrow::compute::concat_batches(&chunk[0].schema(), chunk)?)?;
        }
        Ok(())
    }
}
