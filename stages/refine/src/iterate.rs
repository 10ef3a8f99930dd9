//! `refine.iterate`: rows that fail `until` are sent back through the upstream span of stages
//! (for example generate -> classify -> score) with the next round's random streams, at most
//! `max_rounds` times in all, and the best (or last) attempt is kept.
//!
//! The stage holds its own fresh instances of the span's stages and re-runs them on its thread for
//! the rows of the current batch that failed, so rows that pass on the first try are never held
//! past their batch, memory stays bounded by the batch, and the result of a row depends only on
//! the row and the seed: round k of stage S draws from the stream (seed, S, row id, k). Rows leave
//! in the order they came. The span's stages must be row-wise transforms (one output row per input
//! row, keeping `id`): model.diffuse with count = 1, model.onnx, refine.score, preprocess.sql ...

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::sql::{SqlQuery, filter_mask};
use pipeline::{BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext};
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

    fn build(&self, params: &Params, cx: &BuildContext) -> Result<Box<dyn Stage>> {
        let p: IterateParams = params.parse()?;
        if p.max_rounds == 0 {
            return Err(Error::config("max_rounds", "max_rounds must be at least 1 (the first attempt)"));
        }
        let Some(last) = p.stages.last() else {
            return Err(Error::config("stages", "name the stages to re-run").with_hint(
                "e.g. stages = [\"generate\", \"classify\", \"score\"], ending with the stage before this one",
            ));
        };
        if cx.input.as_deref() != Some(last.as_str()) {
            return Err(Error::config(
                "stages",
                format!(
                    "the span must end with the stage feeding this one (\"{}\"), not \"{last}\"",
                    cx.input.as_deref().unwrap_or("")
                ),
            ));
        }
        let mut span = Vec::with_capacity(p.stages.len());
        let mut span_input = None;
        for (i, id) in p.stages.iter().enumerate() {
            let up = cx
                .upstream
                .iter()
                .find(|u| &u.id == id)
                .ok_or_else(|| Error::config("stages", format!("no stage \"{id}\" comes before this one")))?;
            if up.kind != PluginKind::Transform {
                return Err(Error::config(
                    "stages",
                    format!("stage \"{id}\" is a {}; only transforms can be re-run", up.kind.as_str()),
                )
                .with_hint("start the span after the source, e.g. at the generating model"));
            }
            if i > 0 && up.input.as_deref() != Some(p.stages[i - 1].as_str()) {
                return Err(Error::config(
                    "stages",
                    format!("stage \"{id}\" is not fed by \"{}\"; the span must be contiguous", p.stages[i - 1]),
                ));
            }
            let (stage, input, output) = cx.rebuild(id).map_err(|e| e.in_stage(id))?;
            span.push(SpanStage { id: id.clone(), stage, output });
            if i == 0 {
                span_input = Some(input);
            }
        }
        Ok(Box::new(IterateStage {
            params: p,
            span,
            span_input: span_input.expect("at least one stage"),
            schema: None,
            counts: Counts::default(),
        }))
    }
}

struct SpanStage {
    id: String,
    stage: Box<dyn Stage>,
    output: SchemaRef,
}

/// What run.json reports.
#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    first_try: u64,
    after_retries: u64,
    never: u64,
    reruns: u64,
}

struct IterateStage {
    params: IterateParams,
    span: Vec<SpanStage>,
    span_input: SchemaRef,
    schema: Option<SchemaRef>,
    counts: Counts,
}

impl Stage for IterateStage {
    fn output_schema(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let p = &self.params;
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
        // A retry starts from the span's input columns, taken from the row as it arrives here.
        for field in self.span_input.fields() {
            match input.field_with_name(field.name()) {
                Ok(f) if f.data_type() == field.data_type() => {}
                _ => {
                    return Err(Error::config(
                        "stages",
                        format!(
                            "column `{}`, which \"{}\" reads, does not reach this stage",
                            field.name(),
                            self.span[0].id
                        ),
                    )
                    .with_hint("the span's stages must pass their input columns on"));
                }
            }
        }
        let last = &self.span.last().expect("non-empty").output;
        if last.fields().len() != input.fields().len()
            || last
                .fields()
                .iter()
                .zip(input.fields())
                .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
        {
            return Err(Error::config("stages", "the re-run span does not produce this stage's input schema"));
        }
        let mut fields: Vec<Field> =
            input.fields().iter().filter(|f| f.name() != "attempts").map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("attempts", DataType::Int32, false));
        let schema = Arc::new(Schema::new(fields));
        self.schema = Some(schema.clone());
        Ok(schema)
    }

    fn process(&mut self, input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let Some(batch) = input else { return Ok(()) };
        let n = batch.num_rows();
        let passed = filter_mask(&self.params.until, &batch)?;
        // Each row's kept attempt: (batch, row) into `attempts_batches`, its score and attempt count.
        let mut attempts_batches: Vec<RecordBatch> = vec![batch.clone()];
        let mut kept: Vec<(usize, usize)> = (0..n).map(|r| (0, r)).collect();
        let mut best: Vec<f64> = self.scores(&batch)?;
        let mut attempts = vec![1i32; n];
        let mut pending: Vec<usize> = (0..n).filter(|r| !passed.value(*r)).collect();
        self.counts.rows += n as u64;
        self.counts.first_try += (n - pending.len()) as u64;
        for round in 1..self.params.max_rounds {
            if pending.is_empty() {
                break;
            }
            let take = UInt32Array::from(pending.iter().map(|r| *r as u32).collect::<Vec<_>>());
            let columns = self
                .span_input
                .fields()
                .iter()
                .map(|f| Ok(arrow::compute::take(pipeline::columns::column(&batch, f.name())?.as_ref(), &take, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let retry = RecordBatch::try_new(self.span_input.clone(), columns)?;
            self.counts.reruns += retry.num_rows() as u64;
            let Some(result) = self.rerun(retry, round, cx)? else { break };
            let index: HashMap<&str, usize> = {
                let ids = pipeline::columns::ids(&result)?;
                (0..result.num_rows()).map(|i| (ids.value(i), i)).collect()
            };
            let ok = filter_mask(&self.params.until, &result)?;
            let scores = self.scores(&result)?;
            let ids = pipeline::columns::ids(&batch)?;
            let slot = attempts_batches.len();
            let mut still = Vec::with_capacity(pending.len());
            for &r in &pending {
                // A row the span rejected this round keeps its earlier attempt.
                let Some(&i) = index.get(ids.value(r)) else { continue };
                attempts[r] = round as i32 + 1;
                let better = scores[i] > best[r] || best[r].is_nan() && !scores[i].is_nan();
                if ok.value(i) || self.params.keep == Keep::Last || better {
                    kept[r] = (slot, i);
                    best[r] = scores[i];
                }
                if ok.value(i) {
                    self.counts.after_retries += 1;
                } else {
                    still.push(r);
                }
            }
            attempts_batches.push(result);
            pending = still;
        }
        self.counts.never += pending.len() as u64;
        // Rows in their arrival order, each from its kept attempt (the batch itself when nothing
        // was retried).
        let schema = self.schema.clone().expect("output_schema runs first");
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields().iter().filter(|f| f.name() != "attempts") {
            let arrays = attempts_batches
                .iter()
                .map(|b| pipeline::columns::column(b, f.name()).map(|a| a.as_ref()))
                .collect::<Result<Vec<&dyn arrow::array::Array>>>()?;
            columns.push(match arrays.as_slice() {
                [only] => only.slice(0, only.len()),
                _ => arrow::compute::interleave(&arrays, &kept)?,
            });
        }
        columns.push(Arc::new(Int32Array::from(attempts)));
        out.emit(RecordBatch::try_new(schema, columns)?)
    }

    /// Ends the span's own stages (a process plugin says goodbye instead of being killed). Rows
    /// they emit only at their end belong to no retry and are dropped.
    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        for s in &mut self.span {
            let (mut emitter, _) = Emitter::collector(s.output.clone());
            let mut nested = cx.nested(&s.id, 0);
            s.stage.finish(&mut emitter, &mut nested).map_err(|e| e.in_stage(&s.id))?;
        }
        Ok(())
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counts;
        let share = |k: u64| if c.rows == 0 { 0.0 } else { k as f64 / c.rows as f64 };
        let mut m = serde_json::Map::new();
        m.insert("passed_first_try".into(), c.first_try.into());
        m.insert("passed_after_retries".into(), c.after_retries.into());
        m.insert("never_passed".into(), c.never.into());
        m.insert("pass_rate_first_try".into(), share(c.first_try).into());
        m.insert("pass_rate_final".into(), share(c.first_try + c.after_retries).into());
        m.insert("rows_rerun".into(), c.reruns.into());
        m
    }
}

impl IterateStage {
    /// Each row's score as f64 (NaN where null, or everywhere with keep = "last").
    fn scores(&self, batch: &RecordBatch) -> Result<Vec<f64>> {
        if self.params.keep == Keep::Last {
            return Ok(vec![f64::NAN; batch.num_rows()]);
        }
        let score = arrow::compute::cast(pipeline::columns::column(batch, &self.params.score)?, &DataType::Float64)?;
        let score = score.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
        Ok((0..score.len()).map(|i| if score.is_null(i) { f64::NAN } else { score.value(i) }).collect())
    }

    /// Runs `batch` through the span in round `round`; `None` when every row was rejected.
    fn rerun(&mut self, batch: RecordBatch, round: u32, cx: &StageContext) -> Result<Option<RecordBatch>> {
        let mut current = batch;
        for s in &mut self.span {
            let (mut emitter, received) = Emitter::collector(s.output.clone());
            let mut nested = cx.nested(&s.id, round);
            s.stage.process(Some(current), &mut emitter, &mut nested).map_err(|e| e.in_stage(&s.id))?;
            // A stage may hold rows back (a process plugin joins and pipelines its input): the
            // retried rows are needed now.
            s.stage.flush(&mut emitter, &mut nested).map_err(|e| e.in_stage(&s.id))?;
            drop(emitter);
            let batches: Vec<RecordBatch> = received.try_iter().collect();
            if batches.is_empty() {
                return Ok(None);
            }
            current = arrow::compute::concat_batches(&s.output, &batches)?;
        }
        Ok(Some(current))
    }
}
