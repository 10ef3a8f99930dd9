//! `preprocess.tokenize`: a text column to fixed-length integer tensor columns of token ids (and
//! optionally the attention mask), as a text encoder takes them.
//!
//! The tokenizer is a Hugging Face `tokenizer.json`, or a folder holding one, or a folder in
//! CLIP's slow-tokenizer layout (`vocab.json` + `merges.txt` [+ `tokenizer_config.json`], the
//! `tokenizer/` of a Stable Diffusion export). The CLIP layout is turned into the same pipeline
//! `transformers` builds for `CLIPTokenizerFast` (NFC, whitespace runs to one space, lowercase;
//! CLIP's split regex, byte-level; BPE with `</w>` word ends; start and end tokens around each
//! text), so one `tokenizers` engine runs both. Every row is padded and truncated to
//! `max_length`, so the columns have one shape known at validate time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Int32Array, Int64Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::{assemble, with_outputs};
use pipeline::tensor::typed_tensor_field;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use tokenizers::utils::padding::{PaddingDirection, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{PostProcessor, Tokenizer};

/// The `preprocess.tokenize` plugin.
pub struct PreprocessTokenize;

/// How rows are padded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Every row to `max_length` tokens.
    #[default]
    MaxLength,
    /// To the longest row of the batch: refused, since a tensor column has one shape for every
    /// row, fixed at validate time.
    Longest,
}

/// The integer type of the columns written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdType {
    /// Int32 (what optimum's Stable Diffusion text encoders take).
    #[default]
    Int32,
    /// Int64 (what most exported transformers take).
    Int64,
}

/// Params of `preprocess.tokenize`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// The text column to tokenize.
    #[serde(default = "default_column")]
    pub column: String,
    /// A tokenizer.json, or a folder with tokenizer.json or vocab.json + merges.txt
    /// [+ tokenizer_config.json] (e.g. a Stable Diffusion folder's `tokenizer`).
    pub tokenizer: String,
    /// Tokens per row, the special tokens included.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// "max_length" pads every row to `max_length` ("longest" is refused: a tensor column has one
    /// shape for every row).
    #[serde(default)]
    pub padding: Padding,
    /// Cut longer texts to `max_length` tokens (keeping the end token); when false a longer text
    /// is that row's error.
    #[serde(default = "yes")]
    pub truncation: bool,
    /// The column of token ids to write.
    #[serde(default = "default_into")]
    pub into: String,
    /// Also write the attention mask (1 for a token, 0 for padding) into this column.
    pub mask: Option<String>,
    /// "int32" or "int64": the element type of the columns written.
    #[serde(default)]
    pub dtype: IdType,
    /// The padding token; default the tokenizer's own (tokenizer.json's padding, else
    /// tokenizer_config.json's pad_token, else, for CLIP's layout, its end token).
    pub pad_token: Option<String>,
}

fn default_column() -> String {
    "prompt".into()
}

fn default_max_length() -> usize {
    77
}

fn yes() -> bool {
    true
}

fn default_into() -> String {
    "input_ids".into()
}

impl Plugin for PreprocessTokenize {
    fn name(&self) -> &'static str {
        "preprocess.tokenize"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    /// Each row's ids from its text, the params and the tokenizer file alone.
    fn pure(&self, _params: &Params) -> bool {
        true
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Tokenizes a text column with a Hugging Face tokenizer.json or CLIP's vocab.json + \
             merges.txt, padded and truncated to `max_length`: integer tensor columns of token ids \
             and, optionally, the attention mask, as a text encoder takes them.",
        )
        .params::<TokenizeParams>()
        .reads("<column>", "Utf8", "the text (column `prompt` by default)")
        .writes("<into>", "tensor Int32 or Int64 [max_length]", "the token ids")
        .writes("<mask>", "tensor Int32 or Int64 [max_length]", "the attention mask (when `mask` is given)")
        .example(
            "[[stage]]\nid = \"tokens\"\nuses = \"preprocess.tokenize\"\ntokenizer = \"models/sd/tokenizer\"\n\
             column = \"prompt\"\nmax_length = 77",
        )
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: TokenizeParams = params.parse()?;
        pipeline::columns::require(input, "column", &p.column, &[DataType::Utf8])?;
        if p.padding == Padding::Longest {
            return Err(Error::config("padding", "\"longest\" gives each batch its own length")
                .with_hint("a tensor column has one shape for every row: use padding = \"max_length\""));
        }
        if p.max_length == 0 {
            return Err(Error::config("max_length", "max_length must be at least 1"));
        }
        pipeline::tensor::checked_len("max_length", &[p.max_length])?;
        if p.mask.as_deref() == Some(p.into.as_str()) {
            return Err(Error::config("mask", format!("`mask` and `into` both name `{}`", p.into)));
        }
        let path = cx.resolve(&p.tokenizer);
        let stage = TokenizeStage::new(p, path, input.clone())?;
        let item = match stage.params.dtype {
            IdType::Int32 => DataType::Int32,
            IdType::Int64 => DataType::Int64,
        };
        let mut fields: Vec<Field> =
            vec![typed_tensor_field(&stage.params.into, &[stage.params.max_length], item.clone())];
        if let Some(mask) = &stage.params.mask {
            fields.push(typed_tensor_field(mask, &[stage.params.max_length], item));
        }
        let schema = with_outputs(input, fields);
        Ok(Stage::transform(TokenizeStage { schema, ..stage }))
    }
}

/// A tokenizer as loaded from a file or folder, with the padding token its files name.
struct Loaded {
    tokenizer: Tokenizer,
    pad_token: Option<String>,
}

/// Loads the tokenizer at `path` (a tokenizer.json, or a folder holding one, or CLIP's
/// vocab.json + merges.txt); the error says what the path holds instead.
fn load(path: &Path) -> std::result::Result<Loaded, String> {
    let shown = path.display();
    let (json, folder): (Option<PathBuf>, PathBuf) = if path.is_file() {
        (Some(path.to_path_buf()), path.parent().map(Path::to_path_buf).unwrap_or_default())
    } else if path.is_dir() {
        let json = path.join("tokenizer.json");
        (json.is_file().then_some(json), path.to_path_buf())
    } else {
        return Err(format!("tokenizer {shown} does not exist"));
    };
    let config = read_config(&folder)?;
    if let Some(json) = json {
        let tokenizer = Tokenizer::from_file(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        let pad_token = tokenizer
            .get_padding()
            .map(|p| p.pad_token.clone())
            .or_else(|| config.as_ref().and_then(|c| c.pad.clone()));
        return Ok(Loaded { tokenizer, pad_token });
    }
    let (vocab, merges) = (folder.join("vocab.json"), folder.join("merges.txt"));
    if !(vocab.is_file() && merges.is_file()) {
        return Err(format!("{shown} holds neither tokenizer.json nor vocab.json + merges.txt"));
    }
    let config = config.unwrap_or_default();
    if let Some(class) = config.class.as_deref().filter(|c| !c.starts_with("CLIPTokenizer")) {
        return Err(format!(
            "{shown}: tokenizer_class {class} in vocab.json + merges.txt is not read (CLIPTokenizer's is); give a tokenizer.json"
        ));
    }
    let clip = clip_tokenizer(&vocab, &merges, &config)?;
    Ok(Loaded { tokenizer: clip, pad_token: Some(config.pad.or(config.eos).unwrap_or_else(|| END.into())) })
}

/// CLIP's start and end tokens, when tokenizer_config.json names none.
const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
/// CLIP's split of a text into words before byte-level BPE (transformers' CLIPTokenizer `pat`).
const CLIP_SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The fields of tokenizer_config.json read here; a token is a string or `{"content": ...}`.
#[derive(Debug, Default)]
struct TokenizerConfig {
    class: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    unk: Option<String>,
}

fn read_config(folder: &Path) -> std::result::Result<Option<TokenizerConfig>, String> {
    let path = folder.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = |key: &str| match v.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    };
    Ok(Some(TokenizerConfig {
        class: v.get("tokenizer_class").and_then(|c| c.as_str()).map(str::to_string),
        bos: token("bos_token"),
        eos: token("eos_token"),
        pad: token("pad_token"),
        unk: token("unk_token"),
    }))
}

/// CLIP's tokenizer from its slow files, as the tokenizer.json `transformers` converts them to.
fn clip_tokenizer(vocab: &Path, merges: &Path, config: &TokenizerConfig) -> std::result::Result<Tokenizer, String> {
    let vocab_text = std::fs::read_to_string(vocab).map_err(|e| format!("{}: {e}", vocab.display()))?;
    let vocab_map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&vocab_text).map_err(|e| format!("{}: {e}", vocab.display()))?;
    let merges_text = std::fs::read_to_string(merges).map_err(|e| format!("{}: {e}", merges.display()))?;
    let merge_lines: Vec<&str> =
        merges_text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).collect();
    let bos = config.bos.clone().unwrap_or_else(|| START.into());
    let eos = config.eos.clone().unwrap_or_else(|| END.into());
    let unk = config.unk.clone().unwrap_or_else(|| END.into());
    let id = |token: &str| {
        vocab_map
            .get(token)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| format!("{}: the special token {token:?} is not in the vocabulary", vocab.display()))
    };
    let (bos_id, eos_id) = (id(&bos)?, id(&eos)?);
    let mut specials = vec![(bos.clone(), bos_id), (eos.clone(), eos_id)];
    if let Some(pad) = config.pad.as_ref().filter(|p| **p != bos && **p != eos) {
        specials.push((pad.clone(), id(pad)?));
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .map(|(content, id)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": true, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id], "cls": [bos, bos_id],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merge_lines}
    });
    json.to_string().parse::<Tokenizer>().map_err(|e| format!("{} + {}: {e}", vocab.display(), merges.display()))
}

/// One text's ids and attention mask, or why it cannot be tokenized.
type Encoded = std::result::Result<(Vec<u32>, Vec<u32>), String>;

struct TokenizeStage {
    tokenizer: Tokenizer,
    params: TokenizeParams,
    path: PathBuf,
    schema: SchemaRef,
}

impl TokenizeStage {
    /// The stage for `p` with the tokenizer at `path`, padding and truncating to `max_length`;
    /// the schema is filled in by the caller.
    fn new(p: TokenizeParams, path: PathBuf, schema: SchemaRef) -> Result<TokenizeStage> {
        let loaded = load(&path).map_err(|e| Error::config("tokenizer", e))?;
        let pad_token = p.pad_token.clone().or(loaded.pad_token).ok_or_else(|| {
            Error::config("tokenizer", format!("{} names no padding token", path.display()))
                .with_hint("give pad_token = \"...\" (a token of its vocabulary)")
        })?;
        let pad_id = loaded.tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            let key = if p.pad_token.is_some() { "pad_token" } else { "tokenizer" };
            Error::config(
                key,
                format!("the padding token {pad_token:?} is not in the vocabulary of {}", path.display()),
            )
        })?;
        let mut tokenizer = loaded.tokenizer;
        // The start and end tokens around every text must fit (tokenizers' own check underflows).
        let specials = tokenizer.get_post_processor().map_or(0, |pp| pp.added_tokens(false));
        if p.max_length < specials.max(1) {
            return Err(Error::config(
                "max_length",
                format!("max_length = {} leaves no room for the {specials} special tokens of every text", p.max_length),
            ));
        }
        let truncation = p.truncation.then_some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: p.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        tokenizer.with_truncation(truncation).map_err(|e| Error::config("max_length", e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(p.max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        let stage = TokenizeStage { tokenizer, params: p, path, schema };
        // The empty text holds only the special tokens: if they do not fit, no text does.
        stage.encode("").map_err(|e| Error::config("max_length", e))?;
        Ok(stage)
    }

    /// The ids and mask of one text, `max_length` each, or why the text does not fit.
    fn encode(&self, text: &str) -> Encoded {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let n = encoding.get_ids().len();
        if n != self.params.max_length {
            return Err(format!(
                "the text is {n} tokens, more than max_length = {} (truncation = false)",
                self.params.max_length
            ));
        }
        Ok((encoding.get_ids().to_vec(), encoding.get_attention_mask().to_vec()))
    }
}

/// A tensor column of `width` integers a row, of the stage's element type.
fn int_tensor(values: Vec<u32>, width: usize, dtype: IdType) -> Result<ArrayRef> {
    let (item, array): (DataType, ArrayRef) = match dtype {
        IdType::Int32 => {
            let v: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
            (DataType::Int32, Arc::new(Int32Array::new(ScalarBuffer::from(v), None)))
        }
        IdType::Int64 => {
            let v: Vec<i64> = values.into_iter().map(i64::from).collect();
            (DataType::Int64, Arc::new(Int64Array::new(ScalarBuffer::from(v), None)))
        }
    };
    let field = Arc::new(Field::new("item", item, false));
    Ok(Arc::new(FixedSizeListArray::try_new(field, width as i32, array, None)?))
}

impl Transform for TokenizeStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One row of ids per text, or that row rejected.
    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let texts = pipeline::columns::utf8(&batch, &self.params.column)?;
        let column = &self.params.column;
        let encoded: Vec<Encoded> = (0..texts.len())
            .into_par_iter()
            .map(|r| if texts.is_null(r) { Err(format!("`{column}` is empty")) } else { self.encode(texts.value(r)) })
            .collect();
        let keep = cx.reject_failed(&batch, &encoded)?;
        if keep.true_count() == 0 {
            return Ok(());
        }
        let width = self.params.max_length;
        let (mut ids, mut mask) = (Vec::with_capacity(texts.len() * width), Vec::new());
        for (i, m) in encoded.into_iter().flatten() {
            ids.extend(i);
            if self.params.mask.is_some() {
                mask.extend(m);
            }
        }
        let batch = arrow::compute::filter_record_batch(&batch, &keep)?;
        let mut made = vec![int_tensor(ids, width, self.params.dtype)?];
        if self.params.mask.is_some() {
            made.push(int_tensor(mask, width, self.params.dtype)?);
        }
        out.emit(assemble(&self.schema, &batch, made)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CLIP-layout folder whose vocabulary is the byte alphabet, its `</w>` word ends, two
    /// words built by merges, and the special tokens; ids are computable by hand.
    fn clip_folder(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut vocab = serde_json::Map::new();
        let mut push = |t: String| {
            let n = vocab.len();
            vocab.entry(t).or_insert(serde_json::Value::from(n));
        };
        for c in 'a'..='z' {
            push(c.to_string());
        }
        for c in 'a'..='z' {
            push(format!("{c}</w>"));
        }
        for t in ["s", "se", "sev", "seve", "seven</w>", "on", "one</w>", "<|startoftext|>", "<|endoftext|>"] {
            push(t.to_string());
        }
        std::fs::write(dir.join("vocab.json"), serde_json::Value::Object(vocab).to_string()).unwrap();
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\ns e\nse v\nsev e\nseve n</w>\no n\non e</w>\n").unwrap();
    }

    fn stage(dir: &Path, toml: &str) -> Result<TokenizeStage> {
        let p: TokenizeParams =
            Params::from_toml("t", &format!("tokenizer = \"{}\"\n{toml}", dir.display())).unwrap().parse().unwrap();
        TokenizeStage::new(p, dir.to_path_buf(), Arc::new(arrow::datatypes::Schema::empty()))
    }

    #[test]
    fn clip_layout_tokenizes_as_clip_does() {
        let dir = std::env::temp_dir().join(format!("pipe-tokenize-{}", std::process::id()));
        clip_folder(&dir);
        let s = stage(&dir, "max_length = 8").unwrap();
        // 58 = start, 59 = end (also the padding); "seven" = 55 and "one" = 57 (the letters,
        // then their `</w>` forms, then the merges in order); "Sx" lowercases to s (18) then
        // x</w> (26 + 23).
        let (ids, mask) = s.encode("  Seven\tONE sx").unwrap();
        assert_eq!(ids, [58, 55, 57, 18, 49, 59, 59, 59]);
        assert_eq!(mask, [1, 1, 1, 1, 1, 1, 0, 0]);
        let (ids, _) = s.encode("").unwrap();
        assert_eq!(ids, [58, 59, 59, 59, 59, 59, 59, 59]);
        // Truncation keeps the end token.
        let (ids, mask) = s.encode("one one one one one one one one").unwrap();
        assert_eq!(ids, [58, 57, 57, 57, 57, 57, 57, 59]);
        assert_eq!(mask, [1; 8]);
        let strict = stage(&dir, "max_length = 4\ntruncation = false").unwrap();
        let err = strict.encode("one one one").unwrap_err();
        assert!(err.contains("5 tokens, more than max_length = 4"), "{err}");
        let err = stage(&dir, "max_length = 1").err().unwrap().to_string();
        assert!(err.contains("max_length"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tokenizer_json_pads_with_the_token_asked_for() {
        let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-random-gpt2");
        // Python's tokenizers on the same file: "Hello world, hello pipe" -> these five ids.
        for path in [gpt2.clone(), gpt2.join("tokenizer.json")] {
            let s = stage(&path, "max_length = 8\npad_token = \"<|endoftext|>\"").unwrap();
            let (ids, mask) = s.encode("Hello world, hello pipe").unwrap();
            assert_eq!(ids, [15496, 995, 11, 23748, 12656, 50256, 50256, 50256]);
            assert_eq!(mask, [1, 1, 1, 1, 1, 0, 0, 0]);
        }
        // Neither tokenizer.json nor its tokenizer_config.json names a padding token.
        let err = stage(&gpt2, "max_length = 8").err().unwrap().to_string();
        assert!(err.contains("names no padding token"), "{err}");
        let err = stage(&gpt2, "pad_token = \"<nope>\"").err().unwrap().to_string();
        assert!(err.contains("is not in the vocabulary"), "{err}");
    }

    #[test]
    fn a_folder_without_tokenizer_files_says_so() {
        let dir = std::env::temp_dir().join(format!("pipe-tokenize-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = load(&dir).err().unwrap();
        assert!(err.ends_with("holds neither tokenizer.json nor vocab.json + merges.txt"), "{err}");
        assert!(load(&dir.join("missing")).err().unwrap().ends_with("does not exist"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
