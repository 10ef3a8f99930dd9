//! `model.generate`: prompts in, continuations out. Rows are generated `batch_size` at a time;
//! each row's result depends only on the row (its prompt, its id and the seed), not on which rows
//! share its batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, ListArray, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipe_runtime::{Merge, SessionOptions, SessionParams, ThreadDefault};
use pipeline::{
    BuildContext, Emitter, Error, OnError, Params, Plugin, PluginDoc, PluginKind, Result, ResultExt, Stage,
    StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::folder::ModelFolder;
use crate::lm::Lm;
use crate::search::{Generated, Request, Search, generate};

/// The `model.generate` plugin.
pub struct ModelGenerate;

/// Params of `model.generate`. Unset search settings come from the model folder's config files,
/// then from Hugging Face's defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// An .onnx decoder, or a folder holding one with genai_config.json or config.json /
    /// generation_config.json (model.onnx, optimum's decoder_model_merged.onnx, or its
    /// decoder_model.onnx with decoder_with_past_model.onnx); the config files beside an .onnx
    /// file are read too, so a train stage's artifact (`"@fit/model.onnx"`) brings the config
    /// files it wrote with it.
    pub model: String,
    /// A tokenizer.json; by default the one beside the model, if any.
    pub tokenizer: Option<String>,
    /// The text column holding each prompt ("prompt" unless `prompt_ids` is given).
    pub prompt: Option<String>,
    /// A List<Int> column of prompt token ids, instead of text.
    pub prompt_ids: Option<String>,
    /// Prompt plus generated tokens, at most (20 unless the model's config says otherwise).
    pub max_length: Option<usize>,
    /// Generated tokens, at most (instead of `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Sample instead of choosing the most likely token.
    pub do_sample: Option<bool>,
    /// Divides the logits before sampling (1.0).
    pub temperature: Option<f32>,
    /// Sample among the k most likely tokens only (0 = off).
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probability reaches p (1.0 = off).
    pub top_p: Option<f32>,
    /// Penalizes tokens already in the sequence (1.0 = off; 1.2 is common).
    pub repetition_penalty: Option<f32>,
    /// Beam search with this many beams (1 = off).
    pub num_beams: Option<usize>,
    /// Beam search: finished hypotheses are scored sum_logprobs / length^length_penalty (1.0).
    pub length_penalty: Option<f32>,
    /// Strings that end a row's generation; the text is cut before the first one.
    #[serde(default)]
    pub stop: Vec<String>,
    /// The padding token (default from the config files, else the EOS token).
    pub pad_token_id: Option<i64>,
    /// The end-of-sequence token (default from the config files).
    pub eos_token_id: Option<i64>,
    /// A token put before every prompt (default: none; the config's is used only for empty prompts).
    pub bos_token_id: Option<i64>,
    /// Rows generated together; the pipeline's batch size when absent.
    pub batch_size: Option<usize>,
    /// Batches of `batch_size` rows generated at once, each on its own session of the decoder,
    /// from the rows the stage is given together (the pipeline's `batch_size`). By default as many
    /// as the cores hold (at most 8) for a decoder under 32 MiB on the CPU at one intra-op
    /// thread, where a second thread inside a step only waits; else 1. Rows come out the same
    /// and in the same order whatever the count.
    pub concurrent_batches: Option<usize>,
    /// `providers`, `threads` and `optimization`.
    #[serde(flatten)]
    pub session: SessionParams,
}

/// How a row's length budget is given.
#[derive(Debug, Clone, Copy)]
enum Budget {
    MaxLength(usize),
    MaxNew(usize),
}

impl Plugin for ModelGenerate {
    fn name(&self) -> &'static str {
        "model.generate"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    /// Sampling draws from the seed.
    fn row_cache(&self, _params: &Params) -> pipeline::RowCache {
        pipeline::RowCache::Seeded
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Generates text with a GPT-style ONNX decoder: greedy, sampling (temperature, top-k, \
             top-p, repetition penalty) or beam search, with the KV cache carried between steps \
             (`past_%d`/`present_%d` or `past_key_values.%d.key`/`present.%d.key` names; a model \
             without a cache is re-fed the sequence). A folder may hold optimum's exports as they \
             are: `model.onnx`, `decoder_model_merged.onnx` (fed `use_cache_branch`: false on the \
             first step, with empty pasts, true after) or the legacy `decoder_model.onnx` (first \
             step) with `decoder_with_past_model.onnx` (the steps after); float16 models keep \
             their cache in float16, and models without `position_ids` are fed none. Prompts are \
             text (through tokenizer.json) or token ids; rows are left-padded and masked, so a \
             row's output does not depend on its batch.",
        )
        .params::<GenerateParams>()
        .reads("<prompt>", "Utf8", "the prompt text (or <prompt_ids>, List<Int>)")
        .writes("tokens", "List<Int32>", "prompt and generated tokens")
        .writes(
            "text",
            "Utf8",
            "the decoded continuation (needs a tokenizer; left out, and tokenizer.json not read, when \
             prompts are token ids and every stage after is a sink whose `columns` leave it out)",
        )
        .writes("finish_reason", "Utf8", "\"eos\", \"length\" or \"stop\"")
        .example("[[stage]]\nid = \"write\"\nuses = \"model.generate\"\nmodel = \"models/tiny-gpt\"\nprompt = \"prompt\"\nmax_new_tokens = 40\ndo_sample = true\ntop_p = 0.9")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: GenerateParams = params.parse()?;
        let folder = ModelFolder::open(&cx.resolve(&p.model)).map_err(|e| Error::config("model", e))?;
        // Each setting: the key, else the folder's config files, else Hugging Face's default.
        let mut m = folder.values;
        // A decoder runs one token at a time: its threads follow its size (pipe_runtime::ThreadDefault).
        let options = SessionOptions::for_stage(&p.session, cx).with_thread_default(ThreadDefault::BySize);
        let kv_dims = (m.optional("kv_heads", None), m.optional("head_size", None));
        let (column, ids_column) = match (&p.prompt, &p.prompt_ids) {
            (Some(_), Some(_)) => {
                return Err(Error::config("prompt_ids", "give `prompt` (text) or `prompt_ids` (token ids), not both"));
            }
            (_, Some(ids)) => (ids.clone(), true),
            (Some(text), None) => (text.clone(), false),
            (None, None) => ("prompt".to_string(), false),
        };
        let tokenizer_path = match &p.tokenizer {
            Some(t) => Some(cx.resolve(t)),
            None => Some(folder.dir.join("tokenizer.json")).filter(|t| t.is_file()),
        };
        if let Some(path) = tokenizer_path.as_ref().filter(|path| !path.is_file()) {
            return Err(Error::config("tokenizer", format!("{} does not exist", path.display())));
        }
        // The tokenizer is read only where it is used: text prompts, stop strings, or a `text`
        // column that a stage after this one may read (token ids in, token ids out, as a
        // benchmark or a pipeline that decodes later has it, need none).
        let wanted = !ids_column || !p.stop.is_empty() || cx.is_read_after("text");
        let load_tokenizer = || match tokenizer_path.as_ref().filter(|_| wanted) {
            Some(path) => Tokenizer::from_file(path)
                .map(Some)
                .map_err(|e| Error::config("tokenizer", format!("cannot read {}: {e}", path.display()))),
            None => Ok(None),
        };
        let spare = LaneSpec { model: folder.model.clone(), first: folder.first.clone(), options, kv_dims };
        // The tokenizer (a GPT-2 tokenizer.json takes about 0.1 s to parse) is read on a second
        // thread while ONNX Runtime builds the session; the model's error, if any, comes first.
        let (lm, tokenizer) = std::thread::scope(|s| {
            let tokenizer = s.spawn(load_tokenizer);
            (spare.lm(), tokenizer.join())
        });
        let lm = lm.map_err(|e| Error::config("model", e))?;
        for w in lm.warnings() {
            cx.warn(w.clone());
        }
        let lanes = match p.concurrent_batches {
            Some(n) if n == 0 || n > MAX_LANES => {
                return Err(Error::config(
                    "concurrent_batches",
                    format!("concurrent_batches = {n}: give between 1 and {MAX_LANES}"),
                ));
            }
            Some(n) => n,
            None => default_lanes(&spare.options, &spare.model, spare.first.as_deref()),
        };
        let tokenizer = tokenizer.map_err(|_| Error::config("tokenizer", "reading tokenizer.json panicked"))??;
        if !ids_column && tokenizer.is_none() {
            return Err(Error::config("tokenizer", "text prompts need a tokenizer.json")
                .with_hint("name one with `tokenizer`, put tokenizer.json beside the model, or give `prompt_ids`"));
        }
        if !p.stop.is_empty() && tokenizer.is_none() {
            return Err(Error::config(
                "stop",
                "stop strings are found in the decoded text, which needs a tokenizer.json",
            )
            .with_hint("name one with `tokenizer`, or put tokenizer.json beside the model"));
        }
        let budget = match (p.max_length, p.max_new_tokens) {
            (Some(_), Some(_)) => {
                return Err(Error::config("max_new_tokens", "give `max_length` or `max_new_tokens`, not both"));
            }
            (_, Some(n)) => Budget::MaxNew(n),
            (max_length, None) => Budget::MaxLength(m.value("max_length", max_length, 20)),
        };
        let eos: Vec<i64> = m.value("eos_token_id", p.eos_token_id.map(|e| vec![e]), Vec::new());
        let pad = m.optional("pad_token_id", p.pad_token_id).or(eos.first().copied()).unwrap_or(0);
        let search = Search {
            do_sample: m.value("do_sample", p.do_sample, false),
            temperature: m.value("temperature", p.temperature, 1.0),
            top_k: m.value("top_k", p.top_k, 0),
            top_p: m.value("top_p", p.top_p, 1.0),
            repetition_penalty: m.value("repetition_penalty", p.repetition_penalty, 1.0),
            num_beams: m.value("num_beams", p.num_beams, 1),
            length_penalty: m.value("length_penalty", p.length_penalty, 1.0),
            eos,
            pad,
        };
        check_search(&search, &m)?;
        if search.num_beams > 1 && search.do_sample {
            return Err(m
                .error("num_beams", "beam search with do_sample = true is not supported")
                .with_hint("set do_sample = false, or num_beams = 1"));
        }
        let bos = m.optional("bos_token_id", p.bos_token_id);
        let batch_size = pipeline::config::check_batch_size("batch_size", p.batch_size.unwrap_or(cx.batch_size))?;
        let mut stage = GenerateStage {
            lanes: std::iter::once(Some(lm)).chain((1..lanes).map(|_| None)).collect(),
            spare,
            tokenizer,
            column,
            ids_column,
            budget,
            search,
            stop: p.stop,
            bos,
            batch_size,
            schema: Arc::new(Schema::empty()),
        };
        stage.schema = stage.bind(input)?;
        Ok(Stage::transform(stage))
    }
}

/// Beams per prompt past which beam search is a typo: every beam is a row of every model run.
const MAX_BEAMS: usize = 256;

/// The most batches generated at once: each holds a session of the decoder.
const MAX_LANES: usize = 64;

/// The most batches generated at once by default.
const DEFAULT_MAX_LANES: usize = 8;

/// The default `concurrent_batches`: as many as the cores hold for a small decoder that runs on
/// the CPU, else 1.
///
/// A step of a decoder under [`pipe_runtime::SMALL_MODEL_BYTES`] is a few hundred operators of
/// microseconds each, too small for ONNX Runtime to share across threads (a second intra-op
/// thread added CPU time and no speed, BENCHMARKS.md), so such a decoder runs on one thread and
/// the other cores would idle; independent batches on sessions of their own use them instead.
/// A large decoder uses several threads per step already, and each session holds a copy of its
/// weights; an accelerator has its own parallelism.
fn default_lanes(options: &SessionOptions, model: &std::path::Path, first: Option<&std::path::Path>) -> usize {
    let cpu_only = options.params.providers.iter().all(|p| *p == pipe_runtime::Provider::Cpu);
    let small = pipe_runtime::is_small_model;
    if !cpu_only || !small(model) || !first.is_none_or(small) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / options.threads(model).max(1)).clamp(1, DEFAULT_MAX_LANES)
}

/// What builds a session of the decoder: the stage's first, and one for each batch generated beside it.
struct LaneSpec {
    model: std::path::PathBuf,
    first: Option<std::path::PathBuf>,
    options: SessionOptions,
    kv_dims: (Option<usize>, Option<usize>),
}

impl LaneSpec {
    /// A session of the decoder (the stage's first, or one more).
    fn lm(&self) -> Result<Lm, String> {
        Lm::load(&self.model, self.first.as_deref(), &self.options, self.kv_dims)
    }

    /// One more session, for a batch generated beside the first.
    fn load(&self) -> Result<Lm> {
        self.lm().map_err(|e| Error::msg(format!("loading another session of the decoder: {e}")))
    }
}

/// Checks the search settings; an error points where the value was written (`m`: the key, or
/// `model` for a value from the folder's config files).
fn check_search(s: &Search, m: &Merge) -> Result<()> {
    if !(s.temperature > 0.0 && s.temperature.is_finite()) {
        return Err(m.error("temperature", format!("temperature {} must be above 0", s.temperature)));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(m.error("top_p", format!("top_p {} is not in (0, 1]", s.top_p)));
    }
    if !(s.repetition_penalty > 0.0 && s.repetition_penalty.is_finite()) {
        return Err(m.error("repetition_penalty", format!("{} must be above 0", s.repetition_penalty)));
    }
    if s.num_beams == 0 {
        return Err(m.error("num_beams", "num_beams must be at least 1"));
    }
    if s.num_beams > MAX_BEAMS {
        return Err(m.error("num_beams", format!("num_beams {} is more than the limit, {MAX_BEAMS}", s.num_beams)));
    }
    Ok(())
}

struct GenerateStage {
    /// One decoder session per batch generated at once: the first built with the stage, the
    /// others when first needed (a stage given one batch at a time builds none).
    lanes: Vec<Option<Lm>>,
    spare: LaneSpec,
    tokenizer: Option<Tokenizer>,
    column: String,
    ids_column: bool,
    budget: Budget,
    search: Search,
    stop: Vec<String>,
    bos: Option<i64>,
    batch_size: usize,
    schema: SchemaRef,
}

const OUTPUTS: [&str; 3] = ["tokens", "text", "finish_reason"];

impl GenerateStage {
    /// Checks the prompt column: the output schema.
    fn bind(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let key = if self.ids_column { "prompt_ids" } else { "prompt" };
        let field = pipeline::columns::require(input, key, &self.column, &[])?;
        let ok = match (self.ids_column, field.data_type()) {
            (false, DataType::Utf8) => true,
            (true, DataType::List(item)) => matches!(item.data_type(), DataType::Int64 | DataType::Int32),
            _ => false,
        };
        if !ok {
            let want = if self.ids_column { "List<Int64> or List<Int32>" } else { "Utf8" };
            return Err(Error::config(key, format!("column `{}` is {}", self.column, field.data_type()))
                .with_hint(format!("expected {want}")));
        }
        let mut fields =
            vec![Field::new("tokens", DataType::List(Arc::new(Field::new("item", DataType::Int32, false))), false)];
        if self.tokenizer.is_some() {
            fields.push(Field::new("text", DataType::Utf8, false));
        }
        fields.push(Field::new("finish_reason", DataType::Utf8, false));
        // `text` goes even without a tokenizer: a stale one must not pass for this stage's.
        Ok(pipeline::columns::with_outputs(&pipeline::columns::without(input, &OUTPUTS), fields))
    }
}

impl Transform for GenerateStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn row_wise(&self) -> bool {
        true
    }

    /// `sessions`: the decoder's sessions built, one per batch generated at once.
    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("sessions".into(), self.lanes.iter().filter(|l| l.is_some()).count().into());
        m
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let chunks: Vec<RecordBatch> = (0..batch.num_rows())
            .step_by(self.batch_size)
            .map(|start| batch.slice(start, self.batch_size.min(batch.num_rows() - start)))
            .collect();
        let skip = cx.on_error() == OnError::Skip;
        if self.lanes.len() == 1 || chunks.len() == 1 {
            // One batch at a time, each written as soon as it is done.
            for chunk in &chunks {
                let mut prepared = self.prepare(chunk, cx)?;
                let outcome = {
                    let lm = self.lanes[0].as_mut().expect("the first session is built with the stage");
                    let stopped = Stopped::new(self.tokenizer.as_ref(), &self.stop);
                    compute(lm, &self.search, &mut prepared.requests, &stopped, skip)
                };
                if let Some(done) = self.finish_chunk(chunk, prepared, outcome, cx)? {
                    out.emit(done)?;
                }
            }
            return Ok(());
        }
        let mut prepared = chunks.iter().map(|chunk| self.prepare(chunk, cx)).collect::<Result<Vec<_>>>()?;
        let outcomes = self.run_lanes(&mut prepared, skip)?;
        for ((chunk, prepared), outcome) in chunks.iter().zip(prepared).zip(outcomes) {
            if let Some(done) = self.finish_chunk(chunk, prepared, outcome, cx)? {
                out.emit(done)?;
            }
        }
        Ok(())
    }
}

/// One batch's rows, ready to generate: the rows whose prompts could be read, their requests,
/// and the rows rejected for their prompts (applied in order when the batch is finished).
struct Prepared {
    rows: Vec<usize>,
    requests: Vec<Request>,
    rejects: Vec<(usize, String)>,
}

/// How a batch's generation went.
enum Outcome {
    /// Every row generated together.
    Done(Vec<Generated>),
    /// The batch failed as a whole and `on_error = "skip"`: each row generated alone.
    Alone(Vec<std::result::Result<Generated, String>>),
    /// The batch failed.
    Failed(Error),
}

/// Whether a stop string has appeared in a row's continuation.
struct Stopped<'a> {
    tokenizer: Option<&'a Tokenizer>,
    stop: &'a [String],
    window: usize,
}

impl<'a> Stopped<'a> {
    fn new(tokenizer: Option<&'a Tokenizer>, stop: &'a [String]) -> Self {
        // A stop string that was not there a step ago must end in the newest token. Every token
        // but a special one decodes to at least one byte, so the last (longest stop string in
        // bytes) tokens hold any new occurrence; a few more cover a character split across
        // tokens at the window's start. Decoding only that window keeps a long generation
        // linear instead of re-decoding the whole continuation each step.
        let window = stop.iter().map(String::len).max().unwrap_or(0) + 8;
        Stopped { tokenizer, stop, window }
    }

    fn check(&self, tokens: &[i64]) -> bool {
        match self.tokenizer {
            Some(t) if !self.stop.is_empty() => {
                let text = decode(t, &tokens[tokens.len().saturating_sub(self.window)..]);
                self.stop.iter().any(|s| text.contains(s.as_str()))
            }
            _ => false,
        }
    }
}

/// Generates `requests` on `lm`. A row's result does not depend on its batch (left padding and
/// masks), so a batch that fails is generated again a row at a time under `on_error = "skip"`
/// (`skip`), and only the rows that fail alone are rejected.
fn compute(lm: &mut Lm, search: &Search, requests: &mut Vec<Request>, stopped: &Stopped<'_>, skip: bool) -> Outcome {
    if requests.is_empty() {
        return Outcome::Done(Vec::new());
    }
    let stopped = |_: usize, tokens: &[i64]| stopped.check(tokens);
    let backup = skip.then(|| requests.clone());
    match generate(lm, search, requests, &stopped) {
        Ok(results) => Outcome::Done(results),
        Err(_) if backup.is_some() => {
            *requests = backup.expect("kept for skip");
            let alone = requests
                .iter_mut()
                .map(|request| {
                    generate(lm, search, std::slice::from_mut(request), &stopped)
                        .map(|mut one| one.pop().expect("one row in, one out"))
                        .map_err(|e| e.to_string())
                })
                .collect();
            Outcome::Alone(alone)
        }
        Err(e) => Outcome::Failed(e),
    }
}

impl GenerateStage {
    /// The size of the first session's vocabulary (0 while the model leaves it unknown).
    fn vocab(&self) -> usize {
        self.lanes[0].as_ref().map_or(0, |lm| lm.vocab)
    }

    /// The prompt token ids of each row; a row whose prompt cannot be tokenized is rejected.
    fn prompts(&self, batch: &RecordBatch) -> Result<Vec<std::result::Result<Vec<i64>, String>>> {
        let column = pipeline::columns::column(batch, &self.column)?;
        let vocab = self.vocab();
        let mut prompts = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let prompt = if column.is_null(row) {
                Err(format!("`{}` is empty", self.column))
            } else if self.ids_column {
                list_ids(column, row).map_err(|e| format!("`{}`: {e}", self.column))
            } else {
                let text = column.as_any().downcast_ref::<StringArray>().expect("checked").value(row);
                let tokenizer = self.tokenizer.as_ref().expect("checked at build");
                tokenizer
                    .encode(text, true)
                    .map(|e| e.get_ids().iter().map(|i| i64::from(*i)).collect())
                    .map_err(|e| format!("cannot tokenize: {e}"))
            };
            let prompt = prompt.map(|mut p: Vec<i64>| {
                if let Some(bos) = self.bos.filter(|_| p.is_empty()) {
                    p.insert(0, bos);
                }
                p
            });
            let prompt = prompt.and_then(|p| {
                if p.is_empty() {
                    return Err("the prompt is empty and the model has no BOS token".to_string());
                }
                if let Some(bad) = p.iter().find(|t| vocab > 0 && (**t < 0 || **t as usize >= vocab)) {
                    return Err(format!("token {bad} is outside the model's vocabulary of {vocab}"));
                }
                Ok(p)
            });
            prompts.push(prompt);
        }
        Ok(prompts)
    }

    /// A batch's requests: each row's prompt, budget and random stream.
    fn prepare(&self, batch: &RecordBatch, cx: &StageContext) -> Result<Prepared> {
        let ids = pipeline::columns::ids(batch)?;
        let mut prepared = Prepared { rows: Vec::new(), requests: Vec::new(), rejects: Vec::new() };
        for (row, prompt) in self.prompts(batch)?.into_iter().enumerate() {
            match prompt {
                Ok(prompt) => {
                    let budget = match self.budget {
                        Budget::MaxNew(n) => n,
                        Budget::MaxLength(n) => n.saturating_sub(prompt.len()),
                    };
                    prepared.rows.push(row);
                    prepared.requests.push(Request { prompt, budget, rng: cx.rng(ids.value(row)) });
                }
                Err(reason) => prepared.rejects.push((row, reason)),
            }
        }
        Ok(prepared)
    }

    /// Generates the batches of `prepared` on the stage's sessions at once, each session taking
    /// the next batch when it is done with one; the outcomes in the batches' order.
    fn run_lanes(&mut self, prepared: &mut [Prepared], skip: bool) -> Result<Vec<Outcome>> {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let GenerateStage { lanes, spare, search, tokenizer, stop, .. } = self;
        let used = lanes.len().min(prepared.len());
        let stopped = Stopped::new(tokenizer.as_ref(), stop);
        let slots: Vec<Mutex<(Vec<Request>, Option<Outcome>)>> =
            prepared.iter_mut().map(|p| Mutex::new((std::mem::take(&mut p.requests), None))).collect();
        let next = AtomicUsize::new(0);
        let work = |lane: &mut Option<Lm>| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(i) else { return };
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let outcome = match lane {
                Some(lm) => compute(lm, search, &mut slot.0, &stopped, skip),
                None => match spare.load() {
                    Ok(lm) => compute(lane.insert(lm), search, &mut slot.0, &stopped, skip),
                    Err(e) => Outcome::Failed(e),
                },
            };
            slot.1 = Some(outcome);
        };
        let name = std::thread::current().name().unwrap_or("stage").to_string();
        let (first, others) = lanes.split_at_mut(1);
        let panicked = std::thread::scope(|s| {
            // A thread that cannot be started takes no batches; the ones that run take them all.
            let handles: Vec<_> = others[..used - 1]
                .iter_mut()
                .enumerate()
                .filter_map(|(k, lane)| {
                    std::thread::Builder::new().name(format!("{name}-{}", k + 2)).spawn_scoped(s, || work(lane)).ok()
                })
                .collect();
            work(&mut first[0]);
            let mut panicked = None;
            for handle in handles {
                if let Err(payload) = handle.join() {
                    panicked = Some(pipeline::panics::message(payload.as_ref()));
                }
            }
            panicked
        });
        if let Some(message) = panicked {
            return Err(Error::msg(format!("generating a batch beside the first panicked: {message}")));
        }
        let mut outcomes = Vec::with_capacity(slots.len());
        for (p, slot) in prepared.iter_mut().zip(slots) {
            let (requests, outcome) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            p.requests = requests;
            outcomes.push(outcome.ok_or_else(|| Error::msg("a batch was not generated"))?);
        }
        Ok(outcomes)
    }

    /// Rejects what `prepared` and `outcome` say to, and makes the batch's output rows.
    fn finish_chunk(
        &self,
        batch: &RecordBatch,
        prepared: Prepared,
        outcome: Outcome,
        cx: &mut StageContext,
    ) -> Result<Option<RecordBatch>> {
        let ids = pipeline::columns::ids(batch)?;
        for (row, reason) in &prepared.rejects {
            cx.reject(ids.value(*row), reason)?;
        }
        let Prepared { rows, requests, .. } = prepared;
        if rows.is_empty() {
            return Ok(None);
        }
        let results: Vec<Option<Generated>> = match outcome {
            Outcome::Done(results) => results.into_iter().map(Some).collect(),
            Outcome::Alone(results) => {
                let mut kept = Vec::with_capacity(results.len());
                for (k, result) in results.into_iter().enumerate() {
                    match result {
                        Ok(one) => kept.push(Some(one)),
                        Err(e) => {
                            cx.reject(ids.value(rows[k]), format!("generation failed: {e}"))?;
                            kept.push(None);
                        }
                    }
                }
                kept
            }
            Outcome::Failed(e) => {
                return Err(e).doing(|| format!("generation failed for rows {}..", ids.value(rows[0])));
            }
        };
        let mut keep = vec![false; batch.num_rows()];
        for (&r, result) in rows.iter().zip(&results) {
            keep[r] = result.is_some();
        }
        let kept = arrow::compute::filter_record_batch(batch, &keep.into())?;
        let tokenizer = self.tokenizer.as_ref();
        let stop = &self.stop;
        let mut sequences: Vec<Vec<i32>> = Vec::with_capacity(rows.len());
        let mut texts = Vec::with_capacity(rows.len());
        let mut reasons = Vec::with_capacity(rows.len());
        for (req, result) in requests.iter().zip(&results).filter_map(|(q, r)| r.as_ref().map(|r| (q, r))) {
            sequences.push(req.prompt.iter().chain(&result.tokens).map(|t| *t as i32).collect());
            if let Some(t) = tokenizer {
                let mut text = decode(t, &result.tokens);
                if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    text.truncate(cut);
                }
                texts.push(text);
            }
            reasons.push(result.finish.as_str());
        }
        let mut made: Vec<ArrayRef> = vec![Arc::new(int32_lists(sequences)?)];
        if tokenizer.is_some() {
            made.push(Arc::new(StringArray::from(texts)));
        }
        made.push(Arc::new(StringArray::from(reasons)));
        Ok(Some(pipeline::columns::assemble(&self.schema, &kept, made)?))
    }
}

/// Decodes tokens to text, special tokens skipped; ids the tokenizer does not know are dropped.
fn decode(tokenizer: &Tokenizer, tokens: &[i64]) -> String {
    let ids: Vec<u32> = tokens.iter().filter_map(|t| u32::try_from(*t).ok()).collect();
    tokenizer.decode(&ids, true).unwrap_or_default()
}

/// Row `row` of a List<Int64> or List<Int32> column; a null token id makes the row unusable.
fn list_ids(column: &ArrayRef, row: usize) -> std::result::Result<Vec<i64>, String> {
    let list = column.as_any().downcast_ref::<ListArray>().ok_or("not a list column")?;
    let values = list.value(row);
    let null = |i: usize| format!("token {i} of the prompt is empty");
    if let Some(a) = values.as_any().downcast_ref::<Int64Array>() {
        return a.iter().enumerate().map(|(i, v)| v.ok_or_else(|| null(i))).collect();
    }
    if let Some(a) = values.as_any().downcast_ref::<Int32Array>() {
        return a.iter().enumerate().map(|(i, v)| v.map(i64::from).ok_or_else(|| null(i))).collect();
    }
    Err(format!("list items are {}, not integers", values.data_type()))
}

fn int32_lists(rows: Vec<Vec<i32>>) -> Result<ListArray> {
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
    let values = Int32Array::from(rows.into_iter().flatten().collect::<Vec<_>>());
    Ok(ListArray::try_new(Arc::new(Field::new("item", DataType::Int32, false)), offsets, Arc::new(values), None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_decoder_on_the_cpu_runs_as_many_batches_at_once_as_cores_hold() {
        let dir = std::env::temp_dir().join(format!("pipe-generate-lanes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (small, large) = (dir.join("small.onnx"), dir.join("large.onnx"));
        std::fs::File::create(&small).unwrap().set_len(1000).unwrap();
        std::fs::File::create(&large).unwrap().set_len(pipe_runtime::SMALL_MODEL_BYTES).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = SessionOptions::default().with_thread_default(ThreadDefault::BySize);
        assert_eq!(default_lanes(&cpu, &small, None), cores.clamp(1, 8));
        assert_eq!(default_lanes(&cpu, &large, None), 1);
        assert_eq!(default_lanes(&cpu, &small, Some(&large)), 1, "the first-step model counts too");
        assert_eq!(default_lanes(&cpu, &dir.join("missing.onnx"), None), 1);
        let mut two = cpu.clone();
        two.params.threads = Some(2);
        assert_eq!(default_lanes(&two, &small, None), (cores / 2).clamp(1, 8));
        let mut cuda = cpu.clone();
        cuda.params.providers = vec![pipe_runtime::Provider::Cuda, pipe_runtime::Provider::Cpu];
        assert_eq!(default_lanes(&cuda, &small, None), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
