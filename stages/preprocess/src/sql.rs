//! `preprocess.sql`: a polars SQL query over each batch. The query is planned against the input
//! schema at validate time, so a misspelt column is an error before any data is read.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipeline::sql::SqlQuery;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `preprocess.sql` plugin.
pub struct PreprocessSql;

/// Params of `preprocess.sql`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    /// A polars SQL query over the table `batch`; it must keep the `id` column
    /// (`SELECT id, upper(text) AS text FROM batch WHERE ...`). Aggregates see one batch at a time.
    pub query: String,
}

impl Plugin for PreprocessSql {
    fn name(&self) -> &'static str {
        "preprocess.sql"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Runs a polars SQL query over each batch (the table `batch`), row by row. The output \
             schema is the query's, checked at validate time; tensor columns pass through unchanged.",
        )
        .params::<SqlParams>()
        .reads("<any>", "any", "the columns the query names")
        .writes("<query>", "any", "the query's columns; `id` must be one of them")
        .example("[[stage]]\nid = \"clean\"\nuses = \"preprocess.sql\"\nquery = \"SELECT id, lower(text) AS text FROM batch WHERE length(text) > 0\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: SqlParams = params.parse()?;
        let plan = SqlQuery::plan(&p.query, input).map_err(|e| Error::config("query", e.to_string()))?;
        Ok(Stage::transform(SqlStage { plan }))
    }
}

struct SqlStage {
    /// The query, planned against the input schema.
    plan: SqlQuery,
}

impl Transform for SqlStage {
    fn schema(&self) -> SchemaRef {
        self.plan.output_schema().clone()
    }

    /// A projection keeps each row's id; a `WHERE` that drops a row inside a retried span is
    /// caught by the runner, which names the row.
    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let result = self.plan.run(&batch)?;
        let dropped = batch.num_rows().saturating_sub(result.num_rows());
        cx.count_filtered(dropped as u64);
        out.emit(result)
    }
}
