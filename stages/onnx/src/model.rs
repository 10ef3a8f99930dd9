//! `model.onnx`: columns in, model outputs out, in chunks of `batch_size` rows.
//!
//! A tensor column of per-row shape S feeds an input of shape [batch, ...S]; a model with a fixed
//! batch dimension gets chunks padded to that size, and the padding rows are dropped from the
//! outputs. Results do not depend on the batch size.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipe_runtime::{Feed, Model, SessionOptions, SessionParams, Signature, TensorElementType};
use pipeline::tensor::{tensor_array, tensor_field, tensor_shape, tensor_values};
use pipeline::{
    BuildContext, Emitter, Error, OnError, Params, Plugin, PluginDoc, PluginKind, Result, ResultExt, Stage,
    StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `model.onnx` plugin.
pub struct ModelOnnx;

/// Params of `model.onnx`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnnxParams {
    /// The .onnx file, relative to the pipeline file.
    pub model: String,
    /// ONNX input name -> column; an input not listed reads the column of its own name.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// ONNX output name -> column; when empty, every output is written under its own name.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Rows per model run; the pipeline's batch size when absent.
    pub batch_size: Option<usize>,
    /// `providers`, `threads` and `optimization`.
    #[serde(flatten)]
    pub session: SessionParams,
}

impl Plugin for ModelOnnx {
    fn name(&self) -> &'static str {
        "model.onnx"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Runs an ONNX model over each batch with ONNX Runtime. A tensor column of shape S \
             feeds an input of shape [batch, ...S]; each output row becomes a tensor column. Input \
             names, element types and static dimensions are checked at validate time.",
        )
        .params::<OnnxParams>()
        .reads("<inputs>", "tensor, Float32, Int64, Int32 or Boolean", "one column per model input")
        .writes("<outputs>", "tensor or Float32", "one column per model output")
        .example("[[stage]]\nid = \"classify\"\nuses = \"model.onnx\"\nmodel = \"models/digits.onnx\"\ninputs = { pixels = \"pixels\" }\noutputs = { probs = \"probs\" }")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: OnnxParams = params.parse()?;
        let path = cx.resolve(&p.model);
        let options = SessionOptions::for_stage(&p.session, cx);
        let model = Model::load(&path, &options).map_err(|e| Error::config("model", e.to_string()))?;
        for w in &model.warnings {
            cx.warn(w.clone());
        }
        for name in p.inputs.keys() {
            if model.input(name).is_none() {
                return Err(Error::config("inputs", format!("the model has no input `{name}`"))
                    .with_hint(format!("its inputs: {}", names(&model.inputs))));
            }
        }
        for name in p.outputs.keys() {
            if model.output(name).is_none() {
                return Err(Error::config("outputs", format!("the model has no output `{name}`"))
                    .with_hint(format!("its outputs: {}", names(&model.outputs))));
            }
        }
        let mut stage = OnnxStage {
            batch_size: pipeline::config::check_batch_size("batch_size", p.batch_size.unwrap_or(cx.batch_size))?,
            input_map: p.inputs,
            output_map: p.outputs,
            model,
            feeds: Vec::new(),
            fetches: Vec::new(),
            schema: Arc::new(Schema::empty()),
        };
        stage.schema = stage.bind(input)?;
        Ok(Stage::transform(stage))
    }
}

fn names(sigs: &[Signature]) -> String {
    sigs.iter().map(|s| format!("{} ({} {})", s.name, s.element_name(), s.shape_text())).collect::<Vec<_>>().join(", ")
}

/// How one model input is fed from one column.
#[derive(Debug, Clone)]
struct InputPlan {
    onnx: String,
    column: String,
    /// The per-row shape (empty for a scalar column).
    row_shape: Vec<usize>,
    element: Signature,
}

/// How one model output becomes one column.
#[derive(Debug, Clone)]
struct OutputPlan {
    onnx: String,
    column: String,
    row_shape: Vec<usize>,
}

struct OnnxStage {
    model: Model,
    batch_size: usize,
    input_map: BTreeMap<String, String>,
    output_map: BTreeMap<String, String>,
    feeds: Vec<InputPlan>,
    fetches: Vec<OutputPlan>,
    schema: SchemaRef,
}

impl OnnxStage {
    /// The fixed batch size of the model, if its inputs have one.
    fn fixed_batch(&self) -> Option<usize> {
        self.model.inputs.iter().find_map(|s| s.shape.first().filter(|d| **d > 0).map(|d| *d as usize))
    }

    fn plan_input(&self, sig: &Signature, input: &SchemaRef) -> Result<InputPlan> {
        use pipeline::arrow::datatypes::DataType as D;
        let column = self.input_map.get(&sig.name).cloned().unwrap_or_else(|| sig.name.clone());
        let key = if self.input_map.contains_key(&sig.name) { "inputs" } else { "model" };
        let field = input.field_with_name(&column).map_err(|_| {
            Error::config(
                key,
                format!("ONNX input `{}` reads column `{column}`, which the input does not have", sig.name),
            )
            .with_hint(format!(
                "map it with inputs = {{ {} = \"...\" }}; columns: {}",
                sig.name,
                input.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let row_shape = match field.data_type() {
            D::FixedSizeList(..) => tensor_shape(field).ok_or_else(|| {
                Error::config(key, format!("column `{column}` is {}, not a float32 tensor", field.data_type()))
            })?,
            D::Float32 | D::Int64 | D::Int32 | D::Boolean => Vec::new(),
            other => {
                return Err(Error::config(
                    key,
                    format!(
                        "column `{column}` is {other}; model inputs read tensor, Float32, Int64, Int32 or Boolean columns"
                    ),
                ));
            }
        };
        let supported = matches!(
            sig.element,
            TensorElementType::Float32
                | TensorElementType::Int64
                | TensorElementType::Int32
                | TensorElementType::Uint8
                | TensorElementType::Bool
        );
        if !supported {
            return Err(Error::config(
                key,
                format!("ONNX input `{}` has element type {}, which pipe does not feed", sig.name, sig.element_name()),
            )
            .with_hint("supported: float32, int64, int32, uint8, bool"));
        }
        let model_row = &sig.shape[1.min(sig.shape.len())..];
        let fits = if row_shape.is_empty() {
            model_row.is_empty() || model_row == [1] || model_row == [-1]
        } else {
            model_row.len() == row_shape.len()
                && model_row.iter().zip(&row_shape).all(|(m, c)| *m < 0 || *m as usize == *c)
        };
        if sig.shape.is_empty() || !fits {
            let col_shape = format!("[batch{}]", row_shape.iter().map(|d| format!(", {d}")).collect::<String>());
            return Err(Error::config(
                key,
                format!(
                    "ONNX input `{}` has shape {} ({}), but column `{column}` gives {col_shape}",
                    sig.name,
                    sig.shape_text(),
                    sig.element_name()
                ),
            ));
        }
        Ok(InputPlan { onnx: sig.name.clone(), column, row_shape, element: sig.clone() })
    }

    fn plan_output(&self, sig: &Signature, column: String) -> Result<OutputPlan> {
        let rest = &sig.shape[1.min(sig.shape.len())..];
        if sig.shape.is_empty() || rest.iter().any(|d| *d < 0) {
            return Err(Error::config(
                "outputs",
                format!(
                    "ONNX output `{}` has shape {}: only the batch dimension may be dynamic",
                    sig.name,
                    sig.shape_text()
                ),
            ));
        }
        Ok(OutputPlan { onnx: sig.name.clone(), column, row_shape: rest.iter().map(|d| *d as usize).collect() })
    }

    /// Feeds for rows `start..start+len` of the batch, padded to `run_rows`.
    fn feeds<'a>(
        &self,
        batch: &'a RecordBatch,
        start: usize,
        len: usize,
        run_rows: usize,
    ) -> Result<Vec<(String, Feed<'a>)>> {
        let mut feeds = Vec::with_capacity(self.feeds.len());
        for plan in &self.feeds {
            let column = batch.column_by_name(&plan.column).expect("checked at validate time");
            let width: usize = plan.row_shape.iter().product();
            let mut shape = vec![run_rows as i64];
            if plan.row_shape.is_empty() && plan.element.shape.len() == 2 {
                shape.push(1);
            }
            shape.extend(plan.row_shape.iter().map(|d| *d as i64));
            let floats = |pad: bool| -> Result<Feed<'a>> {
                if plan.row_shape.is_empty() {
                    let a =
                        column.as_any().downcast_ref::<Float32Array>().ok_or_else(|| Error::msg("expected Float32"))?;
                    let mut v = a.values()[start..start + len].to_vec();
                    v.resize(run_rows, 0.0);
                    return Ok(Feed::F32Owned(shape.clone(), v));
                }
                let (values, _) = tensor_values(column.as_ref())?;
                let rows = &values[start * width..(start + len) * width];
                Ok(if pad {
                    let mut v = rows.to_vec();
                    v.resize(run_rows * width, 0.0);
                    Feed::F32Owned(shape.clone(), v)
                } else {
                    Feed::F32(shape.clone(), rows)
                })
            };
            let pad = run_rows != len;
            let feed = match plan.element.element {
                TensorElementType::Float32 => floats(pad)?,
                element => {
                    let as_f64: Vec<f64> = scalar_or_tensor_f64(column.as_ref(), start, len, width.max(1))?;
                    let mut as_f64 = as_f64;
                    as_f64.resize(run_rows * width.max(1), 0.0);
                    match element {
                        TensorElementType::Int64 => Feed::I64(shape, as_f64.iter().map(|v| *v as i64).collect()),
                        TensorElementType::Int32 => Feed::I32(shape, as_f64.iter().map(|v| *v as i32).collect()),
                        TensorElementType::Uint8 => {
                            Feed::U8(shape, as_f64.iter().map(|v| v.clamp(0.0, 255.0) as u8).collect())
                        }
                        _ => Feed::Bool(shape, as_f64.iter().map(|v| *v != 0.0).collect()),
                    }
                }
            };
            feeds.push((plan.onnx.clone(), feed));
        }
        Ok(feeds)
    }
}

/// Values of rows `start..start+len` of a numeric, boolean or tensor column, as f64.
fn scalar_or_tensor_f64(column: &dyn Array, start: usize, len: usize, width: usize) -> Result<Vec<f64>> {
    let slice = column.slice(start, len);
    if let Some(a) = slice.as_any().downcast_ref::<Int64Array>() {
        return Ok(a.values().iter().map(|v| *v as f64).collect());
    }
    if let Some(a) = slice.as_any().downcast_ref::<Int32Array>() {
        return Ok(a.values().iter().map(|v| *v as f64).collect());
    }
    if let Some(a) = slice.as_any().downcast_ref::<BooleanArray>() {
        return Ok(a.iter().map(|v| f64::from(u8::from(v.unwrap_or(false)))).collect());
    }
    if let Some(a) = slice.as_any().downcast_ref::<Float32Array>() {
        return Ok(a.values().iter().map(|v| *v as f64).collect());
    }
    let (values, w) = tensor_values(slice.as_ref())?;
    debug_assert_eq!(w, width);
    Ok(values.iter().map(|v| *v as f64).collect())
}

impl OnnxStage {
    /// Binds the model's inputs to the input's columns and its outputs to new columns: the
    /// stage's output schema.
    fn bind(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let sigs = self.model.inputs.clone();
        self.feeds = sigs.iter().map(|s| self.plan_input(s, input)).collect::<Result<_>>()?;
        let wanted: Vec<(String, String)> = if self.output_map.is_empty() {
            self.model.outputs.iter().map(|s| (s.name.clone(), s.name.clone())).collect()
        } else {
            self.output_map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut fetches = Vec::new();
        for (onnx, column) in wanted {
            let sig = self.model.output(&onnx).expect("checked in build").clone();
            fetches.push(self.plan_output(&sig, column)?);
        }
        self.fetches = fetches;
        let mut fields = Vec::with_capacity(self.fetches.len());
        for f in &self.fetches {
            if input.field_with_name(&f.column).is_ok() {
                return Err(Error::config("outputs", format!("output column `{}` already exists", f.column))
                    .with_hint(format!("name it otherwise with outputs = {{ {} = \"...\" }}", f.onnx)));
            }
            fields.push(if f.row_shape.is_empty() {
                Field::new(&f.column, DataType::Float32, false)
            } else {
                tensor_field(&f.column, &f.row_shape)
            });
        }
        Ok(pipeline::columns::with_outputs(input, fields))
    }
}

impl OnnxStage {
    /// Runs the model on rows `start..start + len` of `batch` (padded to a fixed batch size when
    /// the model has one): each fetched output's values for those rows.
    fn run_rows(&mut self, batch: &RecordBatch, start: usize, len: usize) -> Result<Vec<Vec<f32>>> {
        let run_rows = self.fixed_batch().unwrap_or(len);
        let wanted: Vec<String> = self.fetches.iter().map(|f| f.onnx.clone()).collect();
        let feeds = self.feeds(batch, start, len, run_rows)?;
        let outputs = self.model.run(feeds, &wanted)?;
        let mut values = Vec::with_capacity(outputs.len());
        for (fetched, plan) in outputs.into_iter().zip(&self.fetches) {
            let width: usize = plan.row_shape.iter().product::<usize>().max(1);
            if fetched.values.len() != run_rows * width {
                return Err(Error::msg(format!(
                    "output `{}` has shape {:?}, expected [{run_rows}, {:?}]",
                    plan.onnx, fetched.shape, plan.row_shape
                )));
            }
            let mut v = fetched.values;
            v.truncate(len * width);
            values.push(v);
        }
        Ok(values)
    }
}

/// Appends one run's values to each output's column values.
fn append(collected: &mut [Vec<f32>], values: Vec<Vec<f32>>) {
    for (into, v) in collected.iter_mut().zip(values) {
        into.extend_from_slice(&v);
    }
}

impl Transform for OnnxStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        // A row with an empty input has nothing to feed: it is that row's error, not zeros.
        let usable: Vec<std::result::Result<(), String>> = (0..batch.num_rows())
            .map(|row| {
                match self.feeds.iter().find(|f| batch.column_by_name(&f.column).is_some_and(|c| c.is_null(row))) {
                    Some(f) => Err(format!("`{}` is empty", f.column)),
                    None => Ok(()),
                }
            })
            .collect();
        let batch = if usable.iter().all(|u| u.is_ok()) {
            batch
        } else {
            let keep = cx.reject_failed(&batch, &usable)?;
            arrow::compute::filter_record_batch(&batch, &keep)?
        };
        let rows = batch.num_rows();
        let chunk = self.fixed_batch().unwrap_or(self.batch_size);
        let ids = pipeline::columns::ids(&batch)?.clone();
        let mut collected: Vec<Vec<f32>> = vec![Vec::new(); self.fetches.len()];
        let mut keep = vec![true; rows];
        let mut start = 0;
        while start < rows {
            let len = chunk.min(rows - start);
            match self.run_rows(&batch, start, len).rows(&ids.slice(start, len)) {
                Ok(values) => append(&mut collected, values),
                // A run that fails is run again a row at a time under on_error = "skip", so only
                // the rows the model cannot take are rejected.
                Err(_) if cx.on_error() == OnError::Skip => {
                    for (row, kept) in keep.iter_mut().enumerate().skip(start).take(len) {
                        match self.run_rows(&batch, row, 1) {
                            Ok(values) => append(&mut collected, values),
                            Err(e) => {
                                cx.reject(ids.value(row), e)?;
                                *kept = false;
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            start += len;
        }
        let batch =
            if keep.iter().all(|k| *k) { batch } else { arrow::compute::filter_record_batch(&batch, &keep.into())? };
        let mut made: Vec<ArrayRef> = Vec::with_capacity(self.fetches.len());
        for (plan, values) in self.fetches.iter().zip(collected) {
            made.push(if plan.row_shape.is_empty() {
                Arc::new(Float32Array::from(values))
            } else {
                Arc::new(tensor_array(values, &plan.row_shape)?)
            });
        }
        out.emit(pipeline::columns::assemble(&self.schema, &batch, made)?)
    }
}
