//! `refine.score`: one number per row from a tensor of probabilities or logits: its maximum, the
//! index of the maximum, its entropy, or the value at the index another column names.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::{assemble, with_outputs};
use pipeline::tensor::{tensor_shape, tensor_values};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `refine.score` plugin.
pub struct RefineScore;

/// How a row's tensor becomes its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    /// The largest value (Float32): the confidence of the top class.
    #[default]
    Max,
    /// The index of the largest value (Int64): the predicted class; the first one on ties.
    Argmax,
    /// The entropy in nats, -sum p ln p (Float32): low when the model is sure.
    Entropy,
    /// The value at the index held in `class_column` (Float32): the probability of the intended
    /// class. A row whose index is out of range is a per-item error.
    Class,
}

/// Params of `refine.score`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// The tensor column: probabilities, or logits with `softmax = true`.
    pub column: String,
    /// Apply a softmax over the row's values first.
    #[serde(default)]
    pub softmax: bool,
    /// How the values become one number.
    #[serde(default)]
    pub reduce: Reduce,
    /// For `reduce = "class"`: the integer column holding each row's class index.
    pub class_column: Option<String>,
    /// The column to write.
    #[serde(default = "default_into")]
    pub into: String,
}

fn default_into() -> String {
    "score".to_string()
}

impl Plugin for RefineScore {
    fn name(&self) -> &'static str {
        "refine.score"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Scores each row from a tensor of probabilities or logits (optionally through a softmax): \
             the maximum, the argmax, the entropy, or the value of the class named by another column.",
        )
        .params::<ScoreParams>()
        .reads("<column>", "tensor", "probabilities or logits")
        .reads("<class_column>", "Int64 or Int32", "with reduce = \"class\": the index to read")
        .writes("<into>", "Float32 (Int64 for argmax)", "the score")
        .example("[[stage]]\nid = \"score\"\nuses = \"refine.score\"\ncolumn = \"probs\"\nreduce = \"class\"\nclass_column = \"label\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: ScoreParams = params.parse()?;
        match (p.reduce, &p.class_column) {
            (Reduce::Class, None) => {
                return Err(Error::config("class_column", "reduce = \"class\" needs `class_column`")
                    .with_hint("name the integer column that holds each row's class, e.g. class_column = \"label\""));
            }
            (r, Some(_)) if r != Reduce::Class => {
                return Err(Error::config("class_column", "`class_column` is only read with reduce = \"class\""));
            }
            _ => {}
        }
        let schema = output_schema(&p, input)?;
        Ok(Stage::transform(ScoreStage { params: p, schema }))
    }
}

struct ScoreStage {
    params: ScoreParams,
    schema: SchemaRef,
}

/// The input's columns with the score column (replaced if it exists), checked against the params.
fn output_schema(p: &ScoreParams, input: &SchemaRef) -> Result<SchemaRef> {
    {
        let field = pipeline::columns::require(input, "column", &p.column, &[])?;
        if tensor_shape(field).is_none() {
            return Err(Error::config(
                "column",
                format!("column `{}` is {}, not a tensor", p.column, field.data_type()),
            ));
        }
        if let Some(class) = &p.class_column {
            pipeline::columns::require(input, "class_column", class, &[DataType::Int64, DataType::Int32])?;
        }
        let ty = if p.reduce == Reduce::Argmax { DataType::Int64 } else { DataType::Float32 };
        Ok(with_outputs(input, vec![Field::new(&p.into, ty, false)]))
    }
}

impl Transform for ScoreStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let p = &self.params;
        let (values, width) = tensor_values(pipeline::columns::column(&batch, &p.column)?.as_ref())?;
        let classes = match &p.class_column {
            Some(name) => Some(class_indices(pipeline::columns::column(&batch, name)?)?),
            None => None,
        };
        let ids = pipeline::columns::ids(&batch)?;
        let mut keep = vec![true; batch.num_rows()];
        let mut scores = Vec::with_capacity(batch.num_rows());
        let mut argmax = Vec::with_capacity(batch.num_rows());
        let mut probs = vec![0f32; width];
        for row in 0..batch.num_rows() {
            let raw = &values[row * width..(row + 1) * width];
            let v: &[f32] = if p.softmax {
                softmax(raw, &mut probs);
                &probs
            } else {
                raw
            };
            match p.reduce {
                Reduce::Max => scores.push(v.iter().copied().fold(f32::NEG_INFINITY, f32::max)),
                Reduce::Argmax => argmax.push(first_max(v) as i64),
                Reduce::Entropy => scores.push(-v.iter().filter(|x| **x > 0.0).map(|x| x * x.ln()).sum::<f32>()),
                Reduce::Class => {
                    let class = classes.as_ref().and_then(|c| c[row]);
                    match class.filter(|c| *c >= 0 && (*c as usize) < width) {
                        Some(c) => scores.push(v[c as usize]),
                        None => {
                            let shown = class.map_or("empty".to_string(), |c| c.to_string());
                            cx.reject(
                                ids.value(row),
                                format!(
                                    "class {shown} in `{}` is not an index of `{}` (0..{width})",
                                    p.class_column.as_deref().unwrap_or(""),
                                    p.column
                                ),
                            )?;
                            keep[row] = false;
                            scores.push(0.0);
                        }
                    }
                }
            }
        }
        let score: ArrayRef = match p.reduce {
            Reduce::Argmax => Arc::new(Int64Array::from(argmax)),
            _ => Arc::new(Float32Array::from(scores)),
        };
        let scored = assemble(&self.schema, &batch, vec![score])?;
        if keep.iter().all(|k| *k) {
            return out.emit(scored);
        }
        out.emit(arrow::compute::filter_record_batch(&scored, &keep.into())?)
    }
}

/// The index of the first largest value.
fn first_max(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// A numerically stable softmax of `x` into `out`.
fn softmax(x: &[f32], out: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Each row's class index from an Int64 or Int32 column.
fn class_indices(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
        return Ok(a.iter().collect());
    }
    if let Some(a) = array.as_any().downcast_ref::<Int32Array>() {
        return Ok(a.iter().map(|v| v.map(i64::from)).collect());
    }
    Err(Error::msg(format!("class column is {}, not an integer", array.data_type())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_argmax() {
        let mut out = [0f32; 3];
        softmax(&[1.0, 2.0, 3.0], &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((out[2] - 0.665_240_9).abs() < 1e-6);
        assert_eq!(first_max(&[0.1, 0.7, 0.7]), 1);
        softmax(&[1000.0, 0.0, -1000.0], &mut out);
        assert!(out[0] > 0.999 && out.iter().all(|v| v.is_finite()));
    }
}
