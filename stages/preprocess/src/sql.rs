//! `preprocess.sql`: a polars SQL query over each batch. The query is planned against the input
//! schema at validate time, so a misspelt column is an error before any data is read.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipeline::sql::SqlQuery;
use pipeline::{BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext};
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

    fn build(&self, params: &Params, _cx: &BuildContext) -> Result<Box<dyn Stage>> {
        let p: SqlParams = params.parse()?;
        Ok(Box::new(SqlStage { query: p.query, plan: None }))
    }
}

struct SqlStage {
    query: String,
    plan: Option<SqlQuery>,
}

impl Stage for SqlStage {
    fn output_schema(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let plan = SqlQuery::plan(&self.query, input).map_err(|e| Error::config("query", e.to_string()))?;
        let schema = plan.output_schema().clone();
        self.plan = Some(plan);
        Ok(schema)
    }

    fn process(&mut self, input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let (Some(batch), Some(plan)) = (input, &self.plan) else { return Ok(()) };
        let result = plan.run(&batch)?;
        let dropped = batch.num_rows().saturating_sub(result.num_rows());
        cx.count_filtered(dropped as u64);
        out.emit(result)
    }
}
