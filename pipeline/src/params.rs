//! A stage's own keys, as the plugin sees them: deserialized into the plugin's params struct, with
//! every error located in the pipeline file.

use std::ops::Range;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use crate::config::{Value, toml_diag};
use crate::diag::{Diagnostic, hint_for_serde_message};
use crate::error::{Error, Result};
use crate::source::Sources;

/// The keys of one `[[stage]]` table that belong to its plugin.
#[derive(Debug, Clone)]
pub struct Params {
    stage: String,
    table: Value,
    sources: Arc<Sources>,
}

impl Params {
    pub(crate) fn new(stage: String, table: Value, sources: Arc<Sources>) -> Self {
        Self { stage, table, sources }
    }

    /// Params parsed from a TOML snippet, for tests and for plugins built outside a pipeline file.
    pub fn from_toml(stage: &str, text: &str) -> Result<Self> {
        let mut sources = Sources::default();
        sources.add(format!("<{stage}>"), text.to_string());
        let text = sources.file().expect("just added").text;
        let table =
            toml::de::DeTable::parse(text).map_err(|e| Error::from(crate::config::toml_diag(&sources, &e, 0..0)))?;
        let table = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
        Ok(Self::new(stage.to_string(), table, Arc::new(sources)))
    }

    /// The stage id these params belong to.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The keys present, sorted.
    pub fn keys(&self) -> Vec<String> {
        match self.table.get_ref() {
            DeValue::Table(t) => t.keys().map(|k| k.get_ref().to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// Deserializes into the plugin's params struct (use `deny_unknown_fields`); errors point at the
    /// offending key with a hint. That holds for the keys of a `#[serde(flatten)]`-ed struct too
    /// (the session keys the model stages share): serde parses those from buffered values that
    /// have lost their places, and they are found again here.
    pub fn parse<T: DeserializeOwned + JsonSchema>(&self) -> Result<T> {
        let err = match T::deserialize(ValueDeserializer::from(self.table.clone())) {
            Ok(params) => return Ok(params),
            Err(e) => e,
        };
        // serde gives a flattened key's error no place of its own: none, or the whole table.
        let d = match err.span() {
            Some(span) if !span.is_empty() && span != self.table.span() => {
                toml_diag(&self.sources, &err, self.table.span())
            }
            _ => self.place_unplaced::<T>(err.message().trim()),
        };
        Err(self.prefix(d).into())
    }

    /// A diagnostic for an error serde raised without a place, as it does for flattened keys: an
    /// unknown key (without the list of keys, which serde cannot know there), or a bad value.
    fn place_unplaced<T: DeserializeOwned + JsonSchema>(&self, message: &str) -> Diagnostic {
        let DeValue::Table(table) = self.table.get_ref() else {
            return self.sources.error(self.table.span(), message).maybe_hint(hint_for_serde_message(message));
        };
        let unknown = message.strip_prefix("unknown field `").and_then(|rest| rest.strip_suffix('`'));
        if let Some((key, _)) = unknown.and_then(|key| table.get_key_value(key)) {
            // serde's wording where it knows the keys, so the hint is the usual one.
            let allowed: Vec<String> = crate::docs::param_names::<T>().iter().map(|name| format!("`{name}`")).collect();
            let message = format!("unknown field `{}`, expected one of {}", key.get_ref(), allowed.join(", "));
            return self.sources.error(key.span(), &message).maybe_hint(hint_for_serde_message(&message));
        }
        // The key at fault is the one whose removal makes this error go (a missing required key
        // is a different error, not a cure).
        let culprit = table.iter().find(|(key, _)| {
            let mut rest = table.clone();
            rest.remove(key.get_ref().as_ref());
            let rest = Spanned::new(self.table.span(), DeValue::Table(rest));
            match T::deserialize(ValueDeserializer::from(rest)) {
                Ok(_) => true,
                Err(e) => e.message().trim() != message && !e.message().starts_with("missing field"),
            }
        });
        let span = culprit.map_or(self.table.span(), |(_, value)| value.span());
        self.sources.error(span, message).maybe_hint(hint_for_serde_message(message))
    }

    /// Every string value at any depth, with its dotted key (array items as `key.N`).
    pub fn strings(&self) -> Vec<(String, String)> {
        fn walk(value: &Value, key: &str, out: &mut Vec<(String, String)>) {
            match value.get_ref() {
                DeValue::String(s) => out.push((key.to_string(), s.to_string())),
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &format!("{key}.{i}"), out);
                    }
                }
                DeValue::Table(t) => {
                    for (k, v) in t.iter() {
                        let name =
                            if key.is_empty() { k.get_ref().to_string() } else { format!("{key}.{}", k.get_ref()) };
                        walk(v, &name, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.table, "", &mut out);
        out
    }

    /// These params with every string value that `f` maps to `Some(new)` replaced by `new`; the
    /// places in the file stay, so errors still point at the key.
    pub fn map_strings(&self, f: &dyn Fn(&str) -> Option<String>) -> Params {
        fn walk(value: &Value, f: &dyn Fn(&str) -> Option<String>) -> Value {
            let span = value.span();
            let new = match value.get_ref() {
                DeValue::String(s) => match f(s) {
                    Some(n) => DeValue::String(n.into()),
                    None => return value.clone(),
                },
                DeValue::Array(items) => DeValue::Array(items.iter().map(|v| walk(v, f)).collect()),
                DeValue::Table(t) => DeValue::Table(t.iter().map(|(k, v)| (k.clone(), walk(v, f))).collect()),
                _ => return value.clone(),
            };
            Spanned::new(span, new)
        }
        Params { stage: self.stage.clone(), table: walk(&self.table, f), sources: self.sources.clone() }
    }

    /// The span of `key`'s value, or of the stage table when the key is absent. A dotted key
    /// (`params.keywords`) walks into nested tables and stops at the deepest one present.
    pub fn span(&self, key: &str) -> Range<usize> {
        let mut value = &self.table;
        for part in key.split('.') {
            match value.get_ref() {
                DeValue::Table(t) => match t.get(part) {
                    Some(v) => value = v,
                    None => break,
                },
                _ => break,
            }
        }
        value.span()
    }

    /// A located diagnostic for an error about `key` (or the whole stage).
    pub fn diagnostic(&self, key: Option<&str>, message: &str, hint: Option<String>) -> Diagnostic {
        let span = key.map_or(self.table.span(), |k| self.span(k));
        self.prefix(self.sources.error(span, message).maybe_hint(hint))
    }

    fn prefix(&self, mut d: Diagnostic) -> Diagnostic {
        d.message = format!("stage \"{}\": {}", self.stage, d.message);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        size: [u32; 2],
        mode: Option<String>,
    }

    /// Keys several plugins share, flattened into each one's params.
    #[derive(Debug, serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Shared {
        threads: Option<usize>,
        #[serde(default)]
        providers: Vec<String>,
    }

    #[derive(Debug, serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct WithShared {
        model: String,
        steps: Option<usize>,
        #[serde(flatten)]
        shared: Shared,
    }

    /// The diagnostic for `text`, as (line, column, message, hint).
    fn error_at<T: DeserializeOwned + JsonSchema + std::fmt::Debug>(
        text: &str,
    ) -> (usize, usize, String, Option<String>) {
        let Error::Invalid(d) = Params::from_toml("m", text).unwrap().parse::<T>().unwrap_err() else { panic!() };
        let loc = d.location.unwrap();
        (loc.line, loc.column, d.message, d.hint)
    }

    #[test]
    fn parse_errors_name_the_stage_and_the_key() {
        let p = Params::from_toml("pixels", "size = [8, \"x\"]\n").unwrap();
        let Error::Invalid(d) = p.parse::<P>().unwrap_err() else { panic!() };
        assert!(d.message.starts_with("stage \"pixels\""), "{}", d.message);
        let loc = d.location.unwrap();
        assert_eq!((loc.line, loc.column), (1, 12));
        let p = Params::from_toml("pixels", "size = [8, 8]\nmodee = \"rgb\"\n").unwrap();
        let Error::Invalid(d) = p.parse::<P>().unwrap_err() else { panic!() };
        assert_eq!(d.location.unwrap().line, 2);
        assert_eq!(d.hint.as_deref(), Some("did you mean `mode`?"));
    }

    #[test]
    fn errors_in_flattened_keys_are_placed_too() {
        let ok = Params::from_toml("m", "model = \"a\"\nthreads = 2\n").unwrap().parse::<WithShared>().unwrap();
        assert_eq!((ok.model.as_str(), ok.shared.threads), ("a", Some(2)));
        let (line, column, message, hint) = error_at::<WithShared>("model = \"a\"\nthread = 2\n");
        assert_eq!((line, column), (2, 1));
        assert!(message.starts_with("stage \"m\": unknown field `thread`, expected one of `model`"), "{message}");
        assert_eq!(hint.as_deref(), Some("did you mean `threads`?"));
        let (line, column, message, hint) =
            error_at::<WithShared>("model = \"a\"\nsteps = 3\nthreads = \"x\"\nproviders = []\n");
        assert_eq!((line, column), (3, 11), "{message}");
        assert_eq!(hint.as_deref(), Some("expected usize"));
        // The stage's own keys keep serde's places.
        let (line, column, _, _) = error_at::<WithShared>("model = \"a\"\nsteps = \"x\"\n");
        assert_eq!((line, column), (2, 9));
        let (line, column, message, _) = error_at::<WithShared>("steps = 1\n");
        assert_eq!((line, column), (1, 1));
        assert!(message.ends_with("missing field `model`"), "{message}");
    }

    #[test]
    fn dotted_keys_point_into_nested_tables() {
        let text = "command = [\"x\"]\nparams = { keywords = [], other = 1 }\n";
        let p = Params::from_toml("score", text).unwrap();
        let at = |key: &str| &text[p.span(key)];
        assert_eq!(at("params.keywords"), "[]");
        assert_eq!(at("params.missing"), "{ keywords = [], other = 1 }");
        assert_eq!(at("command"), "[\"x\"]");
    }
}
