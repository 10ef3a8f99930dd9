//! `collect.latent`: random latent vectors for generators and decoders. Each row's values come
//! from its own random stream (pipeline seed, stage id, row id), so a row is the same whatever the
//! batch size, and `count`, `labels` and the seed are all it takes to reproduce a run.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::tensor::{tensor_array, tensor_field};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Source, Stage, StageContext,
};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `collect.latent` plugin.
pub struct CollectLatent;

/// The distribution latents are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LatentDistribution {
    /// Standard normal, N(0, 1).
    #[default]
    Normal,
    /// Uniform on [low, high).
    Uniform,
}

/// Params of `collect.latent`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatentParams {
    /// Rows to generate (for each label, when `labels` is given).
    pub count: usize,
    /// The shape of each row's tensor, e.g. [64] or [1, 8, 8].
    pub shape: Vec<usize>,
    /// The distribution of the values.
    #[serde(default)]
    pub distribution: LatentDistribution,
    /// Lower bound of "uniform".
    #[serde(default = "default_low")]
    pub low: f32,
    /// Upper bound of "uniform".
    #[serde(default = "default_high")]
    pub high: f32,
    /// Class labels: `count` rows for each, with an Int64 `label` column.
    pub labels: Option<Vec<i64>>,
    /// The tensor column to write.
    #[serde(default = "default_into")]
    pub into: String,
}

fn default_low() -> f32 {
    -1.0
}

fn default_high() -> f32 {
    1.0
}

fn default_into() -> String {
    "z".to_string()
}

/// More rows than this in one source is almost certainly a typo.
const MAX_ROWS: usize = 100_000_000;

impl Plugin for CollectLatent {
    fn name(&self) -> &'static str {
        "collect.latent"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Source
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Source,
            "Generates random latent tensors (normal or uniform), `count` rows, or `count` rows per \
             label. Each row's values come from its own seeded stream, so they do not depend on the \
             batch size. Ids are the row numbers (\"0\", \"1\", ...), or \"LABEL-N\" with labels.",
        )
        .params::<LatentParams>()
        .writes("id", "Utf8", "the row number, or LABEL-N")
        .writes("<into>", "tensor <shape>", "the latent (column `z` by default)")
        .writes("label", "Int64", "the class label, when `labels` is given")
        .example("[[stage]]\nid = \"noise\"\nuses = \"collect.latent\"\ncount = 16\nshape = [32]\nlabels = [0, 1, 2]")
    }

    fn build(&self, params: &Params, _input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: LatentParams = params.parse()?;
        pipeline::tensor::checked_len("shape", &p.shape)?;
        let rows = p.count.saturating_mul(p.labels.as_ref().map_or(1, Vec::len));
        if rows > MAX_ROWS {
            return Err(Error::config("count", format!("{rows} rows is more than {MAX_ROWS}")));
        }
        if p.distribution == LatentDistribution::Uniform && p.low.partial_cmp(&p.high) != Some(std::cmp::Ordering::Less)
        {
            return Err(Error::config("low", format!("low ({}) must be below high ({})", p.low, p.high)));
        }
        if let Some(labels) = &p.labels {
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = labels.iter().find(|l| !seen.insert(**l)) {
                return Err(Error::config("labels", format!("label {dup} is listed twice")));
            }
        }
        let mut fields = vec![Field::new("id", DataType::Utf8, false), tensor_field(&p.into, &p.shape)];
        if p.labels.is_some() {
            fields.push(Field::new("label", DataType::Int64, false));
        }
        Ok(Stage::source(LatentSource { params: p, schema: Arc::new(Schema::new(fields)) }))
    }
}

struct LatentSource {
    params: LatentParams,
    schema: SchemaRef,
}

impl LatentSource {
    /// How many rows the source makes.
    fn row_count(&self) -> usize {
        self.params.count * self.params.labels.as_ref().map_or(1, Vec::len)
    }

    /// Row `k`'s (id, label), without listing the rows before it: a source of a hundred million
    /// rows holds one batch of ids at a time. `width` is the digits of the last row number.
    fn row(&self, k: usize, width: usize) -> (String, Option<i64>) {
        let n = self.params.count;
        match &self.params.labels {
            None => (k.to_string(), None),
            Some(labels) => {
                let (label, i) = (labels[k / n], k % n);
                (format!("{label}-{i:0width$}"), Some(label))
            }
        }
    }
}

impl Source for LatentSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn run(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let len = self.params.shape.iter().product::<usize>();
        let p = &self.params;
        // A batch holds at most MAX_TENSOR_VALUES values (1 GiB), however large batch_size is:
        // rows draw from their own streams, so the values do not depend on where batches split.
        let rows_per_batch = cx.batch_size().min((pipeline::tensor::MAX_TENSOR_VALUES / len).max(1));
        let total = self.row_count();
        let width = self.params.count.saturating_sub(1).to_string().len();
        for start in (0..total).step_by(rows_per_batch) {
            let chunk: Vec<(String, Option<i64>)> =
                (start..(start + rows_per_batch).min(total)).map(|k| self.row(k, width)).collect();
            let chunk = chunk.as_slice();
            let mut values = Vec::with_capacity(chunk.len() * len);
            for (id, _) in chunk {
                let mut rng = cx.rng(id);
                match p.distribution {
                    LatentDistribution::Normal => values.extend(
                        (0..len).map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)),
                    ),
                    LatentDistribution::Uniform => values.extend((0..len).map(|_| rng.random_range(p.low..p.high))),
                }
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|(id, _)| id))),
                Arc::new(tensor_array(values, &p.shape)?),
            ];
            if p.labels.is_some() {
                columns.push(Arc::new(Int64Array::from_iter_values(chunk.iter().map(|(_, l)| l.unwrap_or_default()))));
            }
            out.emit(RecordBatch::try_new(out.schema().clone(), columns)?)?;
        }
        Ok(())
    }
}
