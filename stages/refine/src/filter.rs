//! `refine.filter`: keeps the rows for which a SQL boolean expression holds. Dropped rows are
//! counted as filtered (on purpose), not rejected (failed).

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipeline::sql::{SqlQuery, filter_mask};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `refine.filter` plugin.
pub struct RefineFilter;

/// Params of `refine.filter`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// A polars SQL boolean expression over the row's columns, e.g. `score >= 0.9 AND label <> 3`.
    /// Rows where it is false or null are dropped.
    #[serde(rename = "where")]
    pub condition: String,
}

impl Plugin for RefineFilter {
    fn name(&self) -> &'static str {
        "refine.filter"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Keeps the rows where a SQL boolean expression holds; the others are counted as filtered \
             in run.json. The expression is checked against the input schema at validate time.",
        )
        .params::<FilterParams>()
        .reads("<any>", "any", "the columns the expression names")
        .example("[[stage]]\nid = \"confident\"\nuses = \"refine.filter\"\nwhere = \"score >= 0.9\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: FilterParams = params.parse()?;
        let query = format!("SELECT ({}) AS keep FROM batch", p.condition);
        let plan = SqlQuery::plan(&query, input).map_err(|e| Error::config("where", e.to_string()))?;
        let keep = plan.output_schema().field(0);
        if keep.data_type() != &arrow::datatypes::DataType::Boolean {
            return Err(Error::config("where", format!("`{}` is {}, not a boolean", p.condition, keep.data_type()))
                .with_hint("write a condition, e.g. score >= 0.9"));
        }
        Ok(Stage::transform(FilterStage { condition: p.condition, schema: input.clone() }))
    }
}

struct FilterStage {
    condition: String,
    schema: SchemaRef,
}

impl Transform for FilterStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let mask = filter_mask(&self.condition, &batch)?;
        let kept = arrow::compute::filter_record_batch(&batch, &mask)?;
        cx.count_filtered((batch.num_rows() - kept.num_rows()) as u64);
        out.emit(kept)
    }
}
