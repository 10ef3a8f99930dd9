//! `model.onnx`: columns in, model outputs out, in chunks of `batch_size` rows.
//!
//! A tensor column of per-row shape S feeds an input of shape [batch, ...S]; a model with a fixed
//! batch dimension gets chunks padded to that size, and the padding rows are dropped from the
//! outputs. Results do not depend on the batch size.
//!
//! Integer tensor columns (token ids, masks) feed integer inputs as they are. An output whose
//! non-batch dimensions are dynamic (a text encoder's [batch, sequence, hidden]) gets its per-row
//! shape from one run on zeros at build time, so `pipe validate` knows every column's shape; each
//! later run is checked against it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipe_runtime::{Feed, Model, SessionOptions, SessionParams, Signature, TensorElementType};
use pipeline::tensor::{tensor_array, tensor_field, tensor_type, tensor_values};
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
    /// The .onnx file, relative to the pipeline file, or a folder holding `model.onnx` (a
    /// diffusers/optimum folder's `text_encoder` or `vae_decoder`).
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

    /// A model run has no randomness: its result depends on the row and the config.
    fn row_cache(&self, _params: &Params) -> pipeline::RowCache {
        pipeline::RowCache::Deterministic
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
        let path = model_file(cx.resolve(&p.model));
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

/// The model file at `path`: the path itself, or the `model.onnx` of a folder (the layout of each
/// part of a diffusers/optimum export).
fn model_file(path: std::path::PathBuf) -> std::path::PathBuf {
    let inside = path.join("model.onnx");
    if path.is_dir() && inside.is_file() { inside } else { path }
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
    /// The element type of a tensor column (Float32, Int32 or Int64); None for a scalar column.
    column_item: Option<DataType>,
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
        let (row_shape, column_item) = match field.data_type() {
            D::FixedSizeList(..) => {
                let (shape, item) = tensor_type(field).ok_or_else(|| {
                    Error::config(
                        key,
                        format!("column `{column}` is {}, not a Float32, Int32 or Int64 tensor", field.data_type()),
                    )
                })?;
                (shape, Some(item))
            }
            D::Float32 | D::Int64 | D::Int32 | D::Boolean => (Vec::new(), None),
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
        Ok(InputPlan { onnx: sig.name.clone(), column, row_shape, column_item, element: sig.clone() })
    }

    /// The output's per-row shape: its static dimensions, or those of `probed` (the shape one run
    /// gave) where some are dynamic.
    fn plan_output(&self, sig: &Signature, column: String, probed: Option<&[usize]>) -> Result<OutputPlan> {
        if sig.shape.is_empty() {
            return Err(Error::config(
                "outputs",
                format!("ONNX output `{}` is a scalar; outputs need a batch dimension", sig.name),
            ));
        }
        let rest = &sig.shape[1..];
        let row_shape: Vec<usize> = if rest.iter().all(|d| *d >= 0) {
            rest.iter().map(|d| *d as usize).collect()
        } else {
            let probed = probed.expect("probed where a dimension is dynamic");
            let fits = probed.len() == sig.shape.len()
                && rest.iter().zip(&probed[1..]).all(|(m, p)| *m < 0 || *m as usize == *p);
            if !fits || probed[1..].contains(&0) {
                return Err(Error::config(
                    "model",
                    format!(
                        "ONNX output `{}` is declared {}, but a run on zeros gave {probed:?}",
                        sig.name,
                        sig.shape_text()
                    ),
                ));
            }
            probed[1..].to_vec()
        };
        Ok(OutputPlan { onnx: sig.name.clone(), column, row_shape })
    }

    /// One run on zeros of the planned input shapes (one row, or the model's fixed batch): the
    /// shape of each output in `wanted`, to resolve dynamic non-batch dimensions before any data.
    fn probe(&mut self, wanted: &[String]) -> Result<Vec<Vec<usize>>> {
        let rows = self.fixed_batch().unwrap_or(1);
        let feeds: Vec<(String, Feed<'static>)> = self
            .feeds
            .iter()
            .map(|plan| {
                let shape = feed_shape(plan, rows);
                let n = shape.iter().product::<i64>() as usize;
                let feed = match plan.element.element {
                    TensorElementType::Int64 => Feed::I64(shape, vec![0; n]),
                    TensorElementType::Int32 => Feed::I32(shape, vec![0; n]),
                    TensorElementType::Uint8 => Feed::U8(shape, vec![0; n]),
                    TensorElementType::Bool => Feed::Bool(shape, vec![false; n]),
                    _ => Feed::F32Owned(shape, vec![0.0; n]),
                };
                (plan.onnx.clone(), feed)
            })
            .collect();
        let fetched = self.model.run(feeds, wanted).map_err(|e| {
            Error::config("model", format!("a run on zeros, to learn the outputs' dynamic dimensions, failed: {e}"))
        })?;
        Ok(fetched.into_iter().map(|f| f.shape).collect())
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
            let shape = feed_shape(plan, run_rows);
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
            let rows_of = |values: &[i32]| -> Vec<i32> {
                let mut v = values[start * width..(start + len) * width].to_vec();
                v.resize(run_rows * width, 0);
                v
            };
            let feed = match (plan.element.element, &plan.column_item) {
                (TensorElementType::Float32, None | Some(DataType::Float32)) => floats(pad)?,
                // Int32 ids into an int32 input: copied as they are (no detour through f64).
                (TensorElementType::Int32, Some(DataType::Int32)) => {
                    Feed::I32(shape, rows_of(int32_values(column.as_ref())?))
                }
                (TensorElementType::Float32, _) => {
                    let v = scalar_or_tensor_f64(column.as_ref(), start, len, width.max(1))?;
                    let mut v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
                    v.resize(run_rows * width.max(1), 0.0);
                    Feed::F32Owned(shape, v)
                }
                (element, _) => {
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

/// The input's shape for `rows` rows: [rows, ...row shape], or [rows, 1] for a scalar column
/// feeding a 2-D input.
fn feed_shape(plan: &InputPlan, rows: usize) -> Vec<i64> {
    let mut shape = vec![rows as i64];
    if plan.row_shape.is_empty() && plan.element.shape.len() == 2 {
        shape.push(1);
    }
    shape.extend(plan.row_shape.iter().map(|d| *d as i64));
    shape
}

/// The flat values of an Int32 tensor column (a view of the whole column, its offset applied).
fn int32_values(column: &dyn Array) -> Result<&[i32]> {
    let list = column
        .as_any()
        .downcast_ref::<arrow::array::FixedSizeListArray>()
        .ok_or_else(|| Error::msg(format!("expected a tensor column, found {}", column.data_type())))?;
    let values =
        list.values().as_any().downcast_ref::<Int32Array>().ok_or_else(|| Error::msg("expected Int32 values"))?;
    let width = list.value_length() as usize;
    let start = list.offset() * width;
    Ok(&values.values()[start..start + list.len() * width])
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
    if let Some(list) = slice.as_any().downcast_ref::<arrow::array::FixedSizeListArray>() {
        let w = list.value_length() as usize;
        debug_assert_eq!(w, width);
        let values = list.values().slice(list.offset() * w, list.len() * w);
        if let Some(a) = values.as_any().downcast_ref::<Int32Array>() {
            return Ok(a.values().iter().map(|v| *v as f64).collect());
        }
        if let Some(a) = values.as_any().downcast_ref::<Int64Array>() {
            return Ok(a.values().iter().map(|v| *v as f64).collect());
        }
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
        let dynamic = wanted
            .iter()
            .any(|(onnx, _)| self.model.output(onnx).is_some_and(|s| s.shape.iter().skip(1).any(|d| *d < 0)));
        let probed = if dynamic {
            let names: Vec<String> = wanted.iter().map(|(o, _)| o.clone()).collect();
            Some(self.probe(&names)?)
        } else {
            None
        };
        let mut fetches = Vec::new();
        for (i, (onnx, column)) in wanted.into_iter().enumerate() {
            let sig = self.model.output(&onnx).expect("checked in build").clone();
            let shape = probed.as_ref().map(|p| p[i].as_slice());
            fetches.push(self.plan_output(&sig, column, shape)?);
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
            let same_rows = fetched.shape.first() == Some(&run_rows)
                && (plan.row_shape.is_empty() || fetched.shape[1..] == plan.row_shape[..]);
            if fetched.values.len() != run_rows * width || !same_rows {
                return Err(Error::msg(format!(
                    "output `{}` has shape {:?}, but the column's rows are {:?} ({run_rows} rows in this run)",
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
