//! Reading `pipeline.toml`: parse with spans, apply `--set` overrides, expand `${VAR}`, and split
//! the file into pipeline settings, runtime settings and stage tables.
//!
//! Every value keeps its span, so any later error (a plugin's own params, a schema mismatch) can
//! point at the exact key in the file or in the `--set` argument it came from.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use crate::diag::{Diagnostic, closest, hint_for_serde_message};
use crate::params::Params;
use crate::source::Sources;

/// A TOML value with its span, borrowed from a leaked source text.
pub type Value = Spanned<DeValue<'static>>;

/// What a per-item error does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop the run, naming the item.
    #[default]
    Fail,
    /// Record the item in rejects.jsonl and go on.
    Skip,
}

/// The `[pipeline]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// The pipeline's name, reported in run.json.
    pub name: String,
    /// Every random choice derives from (seed, stage id, row id).
    #[serde(default)]
    pub seed: u64,
    /// Where outputs go, relative to the pipeline file.
    #[serde(default = "default_output_dir")]
    pub output_dir: String,
    /// Rows per batch between stages.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// What a per-item error does.
    #[serde(default)]
    pub on_error: OnError,
    /// With "skip": more rejected rows than this fails the run; -1 means no limit. When absent:
    /// no limit if any stage skips (the pipeline's on_error or a stage's own is "skip": the user
    /// asked for bad rows to be set aside), else 0. See [`PipelineFile::max_rejects`].
    #[serde(default)]
    pub max_rejects: Option<i64>,
    /// Training artifacts by content key, relative to the pipeline file; `PIPE_CACHE_DIR`
    /// overrides it.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
    /// An `s3://`, `gs://` or `az://` prefix that `pipe run` uploads its run report and rejects to
    /// when it ends (a shard's `run-IIIII-of-NNNNN.json` and `rejects-IIIII-of-NNNNN.jsonl`), and
    /// where `pipe merge` reads the shards' and writes the merged `run.json` and `rejects.jsonl`:
    /// for shards whose output folders are not shared (pods, cloud machines). See
    /// [`crate::merge::publish`].
    #[serde(default)]
    pub run_reports: Option<String>,
}

fn default_cache_dir() -> String {
    ".pipe/cache".to_string()
}

fn default_output_dir() -> String {
    "out".to_string()
}

/// The largest `batch_size`: a million rows per batch is past any gain, and a larger value is
/// almost certainly a typo that would allocate more memory than a machine has.
pub const MAX_BATCH_SIZE: usize = 1 << 20;

/// Checks a stage's own batch size (`model.onnx batch_size`, `process batch_rows`): at least 1
/// and at most [`MAX_BATCH_SIZE`]; a config error at `key` otherwise.
pub fn check_batch_size(key: &str, rows: usize) -> crate::error::Result<usize> {
    if rows == 0 {
        return Err(crate::error::Error::config(key, format!("{key} must be at least 1")));
    }
    if rows > MAX_BATCH_SIZE {
        return Err(crate::error::Error::config(key, format!("{key} {rows} is more than the limit, {MAX_BATCH_SIZE}")));
    }
    Ok(rows)
}

fn default_batch_size() -> usize {
    64
}

/// The optional `[runtime]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Path of the ONNX Runtime shared library.
    pub onnxruntime: Option<String>,
}

/// One `[[stage]]` table, with the keys the engine reads taken out and the rest left to the plugin.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The stage id.
    pub id: String,
    /// Span of the id's value.
    pub id_span: Range<usize>,
    /// The plugin name.
    pub uses: String,
    /// Span of the `uses` value.
    pub uses_span: Range<usize>,
    /// The upstream stage id, when given.
    pub input: Option<Spanned<String>>,
    /// The stage's own on_error, when given.
    pub on_error: Option<OnError>,
    /// The plugin's keys.
    pub params: Params,
}

/// A parsed pipeline file, ready to be resolved against a registry.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    /// The file as the user named it.
    pub path: PathBuf,
    /// The folder relative paths are resolved against.
    pub dir: PathBuf,
    /// The texts, for diagnostics.
    pub sources: Arc<Sources>,
    /// `[pipeline]`.
    pub settings: PipelineSettings,
    /// `[runtime]`.
    pub runtime: RuntimeSettings,
    /// `[[stage]]`, in file order.
    pub stages: Vec<StageConfig>,
    /// Where `[pipeline] output_dir` is written (the table when the key is absent), for
    /// diagnostics about the output folder.
    pub output_dir_span: Range<usize>,
}

impl PipelineFile {
    /// Reads and checks a pipeline file, applying `--set ID.KEY=VALUE` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, Diagnostic> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::new(format!("cannot read pipeline file {}: {e}", path.display()))
                .hint("pass the path of a pipeline.toml")
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        Self::parse(path, dir, text, overrides)
    }

    /// Parses pipeline text; `path` is used for messages and `dir` for relative paths.
    pub fn parse(path: &Path, dir: PathBuf, text: String, overrides: &[String]) -> Result<Self, Diagnostic> {
        let mut sources = Sources::default();
        sources.add(path.display().to_string(), text);
        let file_text = sources.file().expect("just added").text;
        let mut root = DeTable::parse(file_text).map_err(|e| toml_diag(&sources, &e, 0..0))?;
        for arg in overrides {
            apply_override(&mut sources, root.get_mut(), arg)?;
        }
        interpolate_table(&sources, root.get_mut())?;
        let sources = Arc::new(sources);
        let root = root.into_inner();

        for key in root.keys() {
            if !["pipeline", "runtime", "stage"].contains(&key.get_ref().as_ref()) {
                let hint = match closest(key.get_ref(), ["pipeline", "runtime", "stage"]) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => "allowed top-level keys: pipeline, runtime, stage".to_string(),
                };
                return Err(sources.error(key.span(), format!("unknown top-level key `{}`", key.get_ref())).hint(hint));
            }
        }
        let settings: PipelineSettings = match root.get("pipeline") {
            Some(v) => deserialize(&sources, v)?,
            None => {
                return Err(sources
                    .error(0..0, "missing [pipeline] table")
                    .hint("start the file with [pipeline] and name = \"...\""));
            }
        };
        if let Err(e) = check_batch_size("batch_size", settings.batch_size) {
            let span = key_span(root.get("pipeline"), "batch_size");
            return Err(sources
                .error(span, e.to_string())
                .hint("rows per batch between stages; 64 to a few thousand is usual"));
        }
        if settings.max_rejects.is_some_and(|m| m < -1) {
            let span = key_span(root.get("pipeline"), "max_rejects");
            return Err(sources.error(span, "max_rejects must be -1 (no limit) or a count >= 0"));
        }
        if let Some(url) = &settings.run_reports {
            let scheme = crate::plugin::url_scheme(url).map(str::to_ascii_lowercase);
            if !matches!(scheme.as_deref(), Some("s3" | "s3a" | "gs" | "az" | "abfs" | "abfss")) {
                let span = key_span(root.get("pipeline"), "run_reports");
                return Err(sources
                    .error(span, format!("run_reports \"{url}\" is not an object storage URL pipe can write"))
                    .hint("give an s3://, gs:// or az:// prefix such as \"s3://bucket/runs/digits/\"; shards that share a folder need no run_reports"));
            }
        }
        let runtime: RuntimeSettings = match root.get("runtime") {
            Some(v) => deserialize(&sources, v)?,
            None => RuntimeSettings::default(),
        };
        let stages = match root.get("stage") {
            Some(v) => parse_stages(&sources, v)?,
            None => Vec::new(),
        };
        let output_dir_span = key_span(root.get("pipeline"), "output_dir");
        Ok(Self { path: path.to_path_buf(), dir, sources, settings, runtime, stages, output_dir_span })
    }

    /// The effective `max_rejects`: as given, else -1 (no limit) when the pipeline or any stage
    /// has on_error = "skip", else 0.
    pub fn max_rejects(&self) -> i64 {
        let skips =
            self.settings.on_error == OnError::Skip || self.stages.iter().any(|s| s.on_error == Some(OnError::Skip));
        self.settings.max_rejects.unwrap_or(if skips { -1 } else { 0 })
    }

    /// A path from the pipeline file, resolved against the file's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }
}

fn parse_stages(sources: &Arc<Sources>, value: &Value) -> Result<Vec<StageConfig>, Diagnostic> {
    let DeValue::Array(items) = value.get_ref() else {
        return Err(sources
            .error(value.span(), "`stage` must be an array of tables")
            .hint("write each stage as [[stage]]"));
    };
    let mut stages: Vec<StageConfig> = Vec::new();
    for item in items.iter() {
        let DeValue::Table(table) = item.get_ref() else {
            return Err(sources.error(item.span(), "each stage must be a table").hint("write each stage as [[stage]]"));
        };
        let mut rest = table.clone();
        let id = take_string(sources, &mut rest, "id", item.span())?;
        let uses = take_string(sources, &mut rest, "uses", item.span())?;
        let input = rest.remove("input").map(|v| string_value(sources, &v, "input")).transpose()?;
        let on_error = rest.remove("on_error").map(|v| deserialize::<OnError>(sources, &v)).transpose()?;
        let valid_id = !id.get_ref().is_empty()
            && id.get_ref().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_id {
            return Err(sources
                .error(id.span(), format!("invalid stage id \"{}\"", id.get_ref()))
                .hint("stage ids use lowercase letters, digits, '_' and '-'"));
        }
        if let Some(first) = stages.iter().find(|s| s.id == *id.get_ref()) {
            let line = sources.locate(first.id_span.clone()).map_or(0, |l| l.line);
            return Err(sources
                .error(id.span(), format!("duplicate stage id \"{}\"", id.get_ref()))
                .note(format!("first defined on line {line}"))
                .hint("give every stage a unique id"));
        }
        let params =
            Params::new(id.get_ref().clone(), Spanned::new(item.span(), DeValue::Table(rest)), sources.clone());
        stages.push(StageConfig {
            id: id.get_ref().clone(),
            id_span: id.span(),
            uses: uses.get_ref().clone(),
            uses_span: uses.span(),
            input,
            on_error,
            params,
        });
    }
    Ok(stages)
}

fn take_string(
    sources: &Sources,
    table: &mut DeTable<'static>,
    key: &str,
    table_span: Range<usize>,
) -> Result<Spanned<String>, Diagnostic> {
    match table.remove(key) {
        Some(v) => string_value(sources, &v, key),
        None => Err(sources
            .error(table_span, format!("stage is missing `{key}`"))
            .hint(format!("add {key} = \"...\" to this [[stage]]"))),
    }
}

fn string_value(sources: &Sources, value: &Value, key: &str) -> Result<Spanned<String>, Diagnostic> {
    match value.get_ref() {
        DeValue::String(s) => Ok(Spanned::new(value.span(), s.to_string())),
        other => Err(sources
            .error(value.span(), format!("`{key}` must be a string, found {}", other.type_str()))
            .hint(format!("write {key} = \"...\""))),
    }
}

/// The span of `key`'s value in a table value, else of the table.
fn key_span(table: Option<&Value>, key: &str) -> Range<usize> {
    match table {
        Some(t) => match t.get_ref() {
            DeValue::Table(map) => map.get(key).map_or(t.span(), |v| v.span()),
            _ => t.span(),
        },
        None => 0..0,
    }
}

/// Deserializes a spanned value, turning errors into located diagnostics.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(sources: &Sources, value: &Value) -> Result<T, Diagnostic> {
    T::deserialize(ValueDeserializer::from(value.clone())).map_err(|e| toml_diag(sources, &e, value.span()))
}

/// A diagnostic from a toml error, at its span (or `fallback`), with a hint from the message.
pub(crate) fn toml_diag(sources: &Sources, err: &toml::de::Error, fallback: Range<usize>) -> Diagnostic {
    let message = err.message().trim().to_string();
    let hint = hint_for_serde_message(&message);
    sources.error(err.span().unwrap_or(fallback), message).maybe_hint(hint)
}

/// Applies one `ID.KEY=VALUE` override; VALUE is TOML, or a plain string when it is not.
fn apply_override(sources: &mut Sources, root: &mut DeTable<'static>, arg: &str) -> Result<(), Diagnostic> {
    let base = sources.add("--set", arg.to_string());
    let text = sources.find(base).expect("just added").text;
    let usage = || {
        sources
            .error(base..base + text.len(), format!("invalid --set \"{text}\""))
            .hint("write --set ID.KEY=VALUE, e.g. --set gen.steps=20 or --set pipeline.seed=7")
    };
    let (target, value_text) = text.split_once('=').ok_or_else(usage)?;
    let (id, key_path) = target.split_once('.').ok_or_else(usage)?;
    let keys: Vec<&str> = key_path.split('.').collect();
    if id.is_empty() || keys.iter().any(|k| k.trim().is_empty()) {
        return Err(usage());
    }
    let value_base = base + target.len() + 1;
    let value = match DeValue::parse(value_text) {
        Ok(v) => shift(v, value_base),
        Err(_) => Spanned::new(value_base..value_base + value_text.len(), DeValue::String(Cow::Borrowed(value_text))),
    };
    let key_base = base + id.len() + 1;
    let table = match id {
        "pipeline" | "runtime" => {
            let entry = root
                .entry(Spanned::new(base..base + id.len(), Cow::Borrowed(id)))
                .or_insert_with(|| Spanned::new(base..base + id.len(), DeValue::Table(DeTable::new())));
            match entry.get_mut() {
                DeValue::Table(t) => t,
                _ => return Err(usage()),
            }
        }
        _ => {
            let ids: Vec<String> = stage_ids(root);
            let stage = root.get_mut("stage").and_then(|v| match v.get_mut() {
                DeValue::Array(items) => items.iter_mut().find_map(|item| match item.get_mut() {
                    DeValue::Table(t) if t.get("id").and_then(|v| v.get_ref().as_str()) == Some(id) => Some(t),
                    _ => None,
                }),
                _ => None,
            });
            match stage {
                Some(t) => t,
                None => {
                    let hint = match closest(id, ids.iter().map(String::as_str)) {
                        Some(best) => format!("did you mean \"{best}\"?"),
                        None if ids.is_empty() => "the pipeline has no stages".to_string(),
                        None => format!("stage ids: {}", ids.join(", ")),
                    };
                    return Err(sources
                        .error(
                            base..base + id.len(),
                            format!("--set names stage \"{id}\", which the pipeline does not have"),
                        )
                        .hint(hint));
                }
            }
        }
    };
    insert_path(table, &keys, key_base, value).map_err(|_| usage())
}

fn stage_ids(root: &DeTable<'static>) -> Vec<String> {
    match root.get("stage").map(|v| v.get_ref()) {
        Some(DeValue::Array(items)) => items
            .iter()
            .filter_map(|i| i.get_ref().get("id").and_then(|v| v.get_ref().as_str()).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Sets `keys` (a dotted path) in `table`, creating inner tables.
fn insert_path(
    table: &mut DeTable<'static>,
    keys: &[&'static str],
    mut key_base: usize,
    value: Value,
) -> Result<(), ()> {
    let (first, rest) = keys.split_first().ok_or(())?;
    let key_span = key_base..key_base + first.len();
    if rest.is_empty() {
        table.remove(*first);
        table.insert(Spanned::new(key_span, Cow::Borrowed(*first)), value);
        return Ok(());
    }
    key_base += first.len() + 1;
    let inner = table
        .entry(Spanned::new(key_span.clone(), Cow::Borrowed(*first)))
        .or_insert_with(|| Spanned::new(key_span, DeValue::Table(DeTable::new())));
    match inner.get_mut() {
        DeValue::Table(t) => insert_path(t, rest, key_base, value),
        _ => Err(()),
    }
}

/// Moves every span of a value parsed from an override into the shared offset space.
fn shift(value: Value, by: usize) -> Value {
    let span = value.span();
    let span = span.start + by..span.end + by;
    let inner = match value.into_inner() {
        DeValue::Array(items) => {
            let mut out = DeArray::new();
            for item in items.iter() {
                out.push(shift(item.clone(), by));
            }
            DeValue::Array(out)
        }
        DeValue::Table(table) => {
            let mut out = DeTable::new();
            for (k, v) in table {
                let ks = k.span();
                out.insert(Spanned::new(ks.start + by..ks.end + by, k.into_inner()), shift(v, by));
            }
            DeValue::Table(out)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

fn interpolate_table(sources: &Sources, table: &mut DeTable<'static>) -> Result<(), Diagnostic> {
    for (_, v) in table.iter_mut() {
        interpolate_value(sources, v)?;
    }
    Ok(())
}

fn interpolate_value(sources: &Sources, value: &mut Value) -> Result<(), Diagnostic> {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains('$') => {
            let expanded = expand_env(s, |name| std::env::var(name).ok()).map_err(|name| {
                sources
                    .error(span, format!("environment variable `{name}` is not set"))
                    .hint(format!("set {name}, or give a default: ${{{name}:-value}}"))
            })?;
            *s = Cow::Owned(expanded);
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                interpolate_value(sources, item)?;
            }
        }
        DeValue::Table(t) => interpolate_table(sources, t)?,
        DeValue::Float(f) => {
            let text = f.as_str();
            let number: Option<f64> = text.replace('_', "").parse().ok();
            if !number.is_some_and(f64::is_finite) {
                return Err(sources
                    .error(span, format!("{text} is not a finite number"))
                    .hint("no key of a pipeline takes inf or nan; give a finite value"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`. Errs with the name of an
/// unset variable that has no default.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                out.push_str(after);
                return Ok(out);
            };
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_string()),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Result<PipelineFile, Diagnostic> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        PipelineFile::parse(Path::new("p.toml"), PathBuf::from("."), text.to_string(), &overrides)
    }

    const BASIC: &str =
        "[pipeline]\nname = \"t\"\n\n[[stage]]\nid = \"files\"\nuses = \"collect.files\"\npath = \"data\"\n";

    #[test]
    fn reads_settings_and_stages() {
        let p = parse(BASIC, &[]).unwrap();
        assert_eq!(p.settings.name, "t");
        assert_eq!(p.settings.batch_size, 64);
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0].uses, "collect.files");
        assert_eq!(p.stages[0].params.keys(), vec!["path".to_string()]);
    }

    #[test]
    fn overrides_replace_values_and_point_at_the_argument() {
        let p = parse(BASIC, &["files.path=other", "pipeline.seed=7"]).unwrap();
        assert_eq!(p.settings.seed, 7);
        #[derive(Deserialize, schemars::JsonSchema)]
        struct P {
            path: String,
        }
        let params: P = p.stages[0].params.parse().unwrap();
        assert_eq!(params.path, "other");
        let err = parse(BASIC, &["filez.path=x"]).unwrap_err();
        let loc = err.location.clone().unwrap();
        assert_eq!((loc.file.as_str(), loc.line, loc.column), ("--set", 1, 1));
        assert_eq!(err.hint.as_deref(), Some("did you mean \"files\"?"));
        let err = parse(BASIC, &["pipeline.seed=\"x\""]).unwrap_err();
        assert_eq!(err.location.unwrap().column, 15, "{}", err.message);
    }

    #[test]
    fn expands_environment_variables() {
        let lookup = |n: &str| (n == "HOME_X").then(|| "/h".to_string());
        assert_eq!(expand_env("${HOME_X}/a", lookup).unwrap(), "/h/a");
        assert_eq!(expand_env("${NOPE:-d}/a", lookup).unwrap(), "d/a");
        assert_eq!(expand_env("$${HOME_X} $5", lookup).unwrap(), "${HOME_X} $5");
        assert_eq!(expand_env("${NOPE}", lookup).unwrap_err(), "NOPE");
    }

    #[test]
    fn errors_have_lines_and_hints() {
        let err = parse("[pipeline]\nname = \"t\"\nbatch_sise = 3\n", &[]).unwrap_err();
        let loc = err.location.clone().unwrap();
        assert_eq!((loc.line, loc.column), (3, 1));
        assert_eq!(err.hint.as_deref(), Some("did you mean `batch_size`?"));
        let err = parse("[pipeline]\nname = \"t\"\non_error = \"skipp\"\n", &[]).unwrap_err();
        assert!(err.hint.unwrap().contains("\"skip\""));
        let err = parse(&format!("{BASIC}\n[[stage]]\nid = \"files\"\nuses = \"sink.table\"\n"), &[]).unwrap_err();
        assert_eq!(err.location.unwrap().line, 10);
        assert!(err.message.contains("duplicate"));
    }
}
