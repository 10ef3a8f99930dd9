//! The denoise loop of `model.diffuse`: for each chunk of rows the stage draws (or reads) the
//! starting latents, then runs every scheduler step over the whole chunk at once: scale the input,
//! run the model (on [uncond; cond] rows together under guidance), combine, and step the
//! scheduler. Each output row's randomness comes from its own stream, so results do not depend on
//! the batch size. A row that cannot be denoised (a null condition, say) is rejected through
//! on_error before the loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipe_runtime::{Feed, TensorElementType};
use pipeline::tensor::{tensor_array, tensor_values};
use pipeline::{Emitter, Error, OnError, Result, ResultExt, StageContext, Transform};
use rand_distr::{Distribution, StandardNormal};

use crate::params::{Number, Uncond};
use crate::scheduler::Scheduler;
use crate::stage::DiffuseStage;

/// A row's condition: a class id, or a tensor.
#[derive(Debug, Clone)]
enum Cond {
    Int(i64),
    Tensor(Vec<f32>),
}

impl Transform for DiffuseStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One sample per row keeps the row's id; more fan out.
    fn row_wise(&self) -> bool {
        self.params.count == 1
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        // Rows that cannot be denoised go through on_error; the others are unaffected (each
        // sample's noise comes from its own id).
        let verdicts = self.usable(&batch)?;
        let batch = if verdicts.iter().all(std::result::Result::is_ok) {
            batch
        } else {
            let keep = cx.reject_failed(&batch, &verdicts)?;
            arrow::compute::filter_record_batch(&batch, &keep)?
        };
        let count = self.params.count;
        // Chunks of input rows such that chunk rows x count stays near batch_size samples.
        let per_chunk = (self.batch_size / count).max(1);
        for start in (0..batch.num_rows()).step_by(per_chunk) {
            let chunk = batch.slice(start, per_chunk.min(batch.num_rows() - start));
            match self.denoise(&chunk, cx) {
                Ok(done) => out.emit(done)?,
                // Each sample depends only on its row, so a chunk the model fails is denoised
                // again a row at a time under on_error = "skip": only the rows that fail alone
                // are rejected.
                Err(_) if cx.on_error() == OnError::Skip && chunk.num_rows() > 1 => {
                    let ids = pipeline::columns::ids(&chunk)?.clone();
                    for row in 0..chunk.num_rows() {
                        match self.denoise(&chunk.slice(row, 1), cx) {
                            Ok(done) => out.emit(done)?,
                            Err(e) => cx.reject(ids.value(row), e)?,
                        }
                    }
                }
                Err(e) if cx.on_error() == OnError::Skip => cx.reject(pipeline::columns::ids(&chunk)?.value(0), e)?,
                Err(e) => return Err(e).rows(pipeline::columns::ids(&chunk)?),
            }
        }
        Ok(())
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("scheduler".into(), self.config.kind.name().into());
        m.insert("model_runs".into(), self.model_runs.into());
        m.insert("model_rows".into(), self.model_rows.into());
        m
    }
}

impl DiffuseStage {
    /// Per row of `batch`, whether it can be denoised, or why not: its condition, latents or noise
    /// is null, or its class label does not fit the model's int32 condition input.
    fn usable(&self, batch: &RecordBatch) -> Result<Vec<std::result::Result<(), String>>> {
        let p = &self.params;
        let mut verdicts = vec![Ok(()); batch.num_rows()];
        let uncond_column = match &p.uncond {
            Some(Uncond::Column(c)) => Some(c.clone()),
            _ => None,
        };
        for name in [&p.condition, &uncond_column, &p.latents, &p.noise].into_iter().flatten() {
            let column = pipeline::columns::column(batch, name)?;
            for (r, verdict) in verdicts.iter_mut().enumerate() {
                if verdict.is_ok() && column.is_null(r) {
                    *verdict = Err(format!("`{name}` is empty"));
                }
            }
        }
        if let (Some(name), Some((input, TensorElementType::Int32))) = (&p.condition, &self.names.condition)
            && let Some(labels) = pipeline::columns::column(batch, name)?.as_any().downcast_ref::<Int64Array>()
        {
            for (r, verdict) in verdicts.iter_mut().enumerate() {
                if verdict.is_ok() && i32::try_from(labels.value(r)).is_err() {
                    *verdict = Err(format!(
                        "`{name}` is {}, which the model's int32 input `{input}` cannot hold",
                        labels.value(r)
                    ));
                }
            }
        }
        Ok(verdicts)
    }

    /// Denoises every row of `batch` (`usable` ones: [`DiffuseStage::usable`]), `count` samples each.
    fn denoise(&mut self, batch: &RecordBatch, cx: &mut StageContext) -> Result<RecordBatch> {
        let p = &self.params;
        let schema = self.schema.clone();
        let len: usize = p.sample_shape.iter().product();
        let (rows, count) = (batch.num_rows(), p.count);
        let n = rows * count;
        let ids = pipeline::columns::ids(batch)?;
        let out_ids: Vec<String> = (0..rows)
            .flat_map(|r| (0..count).map(move |k| (r, k)))
            .map(|(r, k)| if count == 1 { ids.value(r).to_string() } else { format!("{}-{k}", ids.value(r)) })
            .collect();
        let mut scheduler = Scheduler::new(&self.config, p.steps, n * len).map_err(|e| Error::msg(e.message))?;
        let sigma = scheduler.init_noise_sigma() as f32;
        let mut rngs: Vec<_> = out_ids.iter().map(|id| cx.rng(id)).collect();
        // Starting noise.
        let mut sample = Vec::with_capacity(n * len);
        // Latents start the first attempt; a retry (refine.iterate) draws fresh noise.
        let latents = match &p.latents {
            Some(column) => Some(tensor_values(pipeline::columns::column(batch, column)?.as_ref())?),
            None => None,
        };
        for (i, rng) in rngs.iter_mut().enumerate() {
            let r = i / count;
            match &latents {
                Some((values, width)) if cx.round_of(ids.value(r)) == 0 => {
                    sample.extend(values[r * width..(r + 1) * width].iter().map(|v| v * sigma));
                }
                _ => sample.extend(
                    (0..len).map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng) * sigma),
                ),
            }
        }
        let given_noise = match &p.noise {
            Some(column) => Some(tensor_values(pipeline::columns::column(batch, column)?.as_ref())?),
            None => None,
        };
        let conditions = match &p.condition {
            Some(name) => Some(column_conds(batch, name)?),
            None => None,
        };
        let unconds = match &p.uncond {
            Some(Uncond::Column(name)) => Some(column_conds(batch, name)?),
            _ => None,
        };
        let guided = p.guidance_scale != 1.0;
        let w = p.guidance_scale as f32;
        let mut trace = if p.trace { Vec::with_capacity(n * self.model_steps * len) } else { Vec::new() };
        let mut traced: Vec<Vec<f32>> = Vec::new();
        let mut model_input = vec![0f32; n * len];
        let timesteps = scheduler.timesteps().to_vec();
        for (step, &t) in timesteps.iter().enumerate() {
            scheduler.scale_model_input(step, &sample, &mut model_input);
            let copies = if guided { 2 } else { 1 };
            let rows_in = n * copies;
            let mut feeds: Vec<(String, Feed<'_>)> = Vec::with_capacity(3);
            let mut shape = vec![rows_in as i64];
            shape.extend(p.sample_shape.iter().map(|d| *d as i64));
            let x = if guided {
                Feed::F32Owned(shape, [model_input.as_slice(), model_input.as_slice()].concat())
            } else {
                Feed::F32(shape, &model_input)
            };
            feeds.push((self.names.sample.clone(), x));
            let t_shape = if self.names.timestep_rank == 0 { Vec::new() } else { vec![rows_in as i64] };
            let t_count = if self.names.timestep_rank == 0 { 1 } else { rows_in };
            let t_feed = match self.names.timestep_type {
                TensorElementType::Int64 => Feed::I64(t_shape, vec![t.round() as i64; t_count]),
                TensorElementType::Int32 => Feed::I32(t_shape, vec![t.round() as i32; t_count]),
                _ => Feed::F32Owned(t_shape, vec![t as f32; t_count]),
            };
            feeds.push((self.names.timestep.clone(), t_feed));
            if let (Some((name, ty)), Some(conds)) = (&self.names.condition, &conditions) {
                feeds.push((name.clone(), self.condition_feed(conds, unconds.as_deref(), count, guided, *ty)?));
            }
            let fetched = self.model.run(feeds, std::slice::from_ref(&self.names.output))?;
            self.model_runs += 1;
            self.model_rows += rows_in as u64;
            let prediction = &fetched[0].values;
            if prediction.len() != rows_in * len {
                return Err(Error::msg(format!(
                    "output `{}` has shape {:?}; [{rows_in}, {}] expected",
                    self.names.output,
                    fetched[0].shape,
                    p.sample_shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )));
            }
            let guided_output: Vec<f32>;
            let output: &[f32] = if guided {
                let (uncond, cond) = prediction.split_at(n * len);
                guided_output = uncond.iter().zip(cond).map(|(u, c)| u + w * (c - u)).collect();
                &guided_output
            } else {
                prediction
            };
            let noise: Option<Vec<f32>> = if scheduler.needs_noise(step) {
                Some(match &given_noise {
                    Some((values, width)) => (0..rows)
                        .flat_map(|r| (0..count).map(move |_| r))
                        .flat_map(|r| values[r * width + step * len..r * width + (step + 1) * len].iter().copied())
                        .collect(),
                    None => rngs
                        .iter_mut()
                        .flat_map(|rng| {
                            (0..len)
                                .map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                })
            } else {
                None
            };
            scheduler.step(step, output, &mut sample, noise.as_deref()).map_err(Error::msg)?;
            if p.trace {
                traced.push(sample.clone());
            }
        }
        if self.output_scale != 1.0 {
            for x in &mut sample {
                *x *= self.output_scale;
            }
        }
        if p.trace {
            for i in 0..n {
                for s in &traced {
                    trace.extend_from_slice(&s[i * len..(i + 1) * len]);
                }
            }
        }
        // Repeat each input row `count` times, with the new ids.
        let take: Vec<u32> = (0..rows as u32).flat_map(|r| std::iter::repeat_n(r, count)).collect();
        let take = arrow::array::UInt32Array::from(take);
        let mut made: BTreeMap<&str, ArrayRef> = BTreeMap::new();
        made.insert("id", Arc::new(StringArray::from(out_ids)));
        made.insert(p.into.as_str(), Arc::new(tensor_array(sample, &p.sample_shape)?));
        if p.trace {
            let shape = [vec![self.model_steps], p.sample_shape.clone()].concat();
            made.insert("trace", Arc::new(tensor_array(trace, &shape)?));
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| match made.get(f.name().as_str()) {
                Some(c) => Ok(c.clone()),
                None => Ok(arrow::compute::take(pipeline::columns::column(batch, f.name())?.as_ref(), &take, None)?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// The condition input for one step: per sample, with the unconditional copies first under
    /// guidance (from `unconds`, each row's, when `uncond` names a column).
    fn condition_feed(
        &self,
        conds: &[Cond],
        unconds: Option<&[Cond]>,
        count: usize,
        guided: bool,
        ty: TensorElementType,
    ) -> Result<Feed<'static>> {
        let per_sample: Vec<&Cond> = conds.iter().flat_map(|c| std::iter::repeat_n(c, count)).collect();
        if let (true, Some(unconds)) = (guided, unconds) {
            let uncond_samples: Vec<&Cond> = unconds.iter().flat_map(|c| std::iter::repeat_n(c, count)).collect();
            return self.feed_of(uncond_samples.into_iter().chain(per_sample).collect(), ty);
        }
        let uncond = match self.params.uncond {
            Some(Uncond::Value(v)) => v,
            _ => Number::Int(0),
        };
        let n = per_sample.len() as i64;
        let rows = if guided { 2 * n } else { n };
        match per_sample.first() {
            Some(Cond::Tensor(first)) => {
                let width = first.len();
                let mut values = Vec::with_capacity(rows as usize * width);
                if guided {
                    values.extend(std::iter::repeat_n(uncond.as_f64() as f32, n as usize * width));
                }
                for c in &per_sample {
                    if let Cond::Tensor(v) = c {
                        values.extend_from_slice(v);
                    }
                }
                let mut shape = vec![rows];
                shape.extend(self.cond_shape.iter().map(|d| *d as i64));
                Ok(Feed::F32Owned(shape, values))
            }
            _ => {
                let ints: Vec<i64> = per_sample.iter().map(|c| if let Cond::Int(i) = c { *i } else { 0 }).collect();
                let u = uncond.as_f64() as i64;
                let all: Vec<i64> =
                    if guided { std::iter::repeat_n(u, ints.len()).chain(ints).collect() } else { ints };
                Ok(match ty {
                    TensorElementType::Int32 => Feed::I32(vec![rows], all.into_iter().map(|v| v as i32).collect()),
                    TensorElementType::Float32 => {
                        Feed::F32Owned(vec![rows], all.into_iter().map(|v| v as f32).collect())
                    }
                    _ => Feed::I64(vec![rows], all),
                })
            }
        }
    }

    /// The condition input holding `conds`, one per row of the run, in order.
    fn feed_of(&self, conds: Vec<&Cond>, ty: TensorElementType) -> Result<Feed<'static>> {
        let rows = conds.len() as i64;
        match conds.first() {
            Some(Cond::Tensor(first)) => {
                let mut values = Vec::with_capacity(conds.len() * first.len());
                for c in &conds {
                    if let Cond::Tensor(v) = c {
                        values.extend_from_slice(v);
                    }
                }
                let mut shape = vec![rows];
                shape.extend(self.cond_shape.iter().map(|d| *d as i64));
                Ok(Feed::F32Owned(shape, values))
            }
            _ => {
                let ints = conds.iter().map(|c| if let Cond::Int(i) = c { *i } else { 0 });
                Ok(match ty {
                    TensorElementType::Int32 => Feed::I32(vec![rows], ints.map(|v| v as i32).collect()),
                    TensorElementType::Float32 => Feed::F32Owned(vec![rows], ints.map(|v| v as f32).collect()),
                    _ => Feed::I64(vec![rows], ints.collect()),
                })
            }
        }
    }
}

/// Each row's condition in column `name` (no row's is null: `usable` rejected those).
fn column_conds(batch: &RecordBatch, name: &str) -> Result<Vec<Cond>> {
    let column = pipeline::columns::column(batch, name)?;
    if let Some(a) = column.as_any().downcast_ref::<Int64Array>() {
        return Ok(a.values().iter().map(|v| Cond::Int(*v)).collect());
    }
    if let Some(a) = column.as_any().downcast_ref::<Int32Array>() {
        return Ok(a.values().iter().map(|v| Cond::Int(i64::from(*v))).collect());
    }
    let (values, width) = tensor_values(column.as_ref())?;
    Ok((0..batch.num_rows()).map(|r| Cond::Tensor(values[r * width..(r + 1) * width].to_vec())).collect())
}
