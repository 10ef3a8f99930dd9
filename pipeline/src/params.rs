//! A stage's own keys, as the plugin sees them: deserialized into the plugin's params struct, with
//! every error located in the pipeline file.

use std::ops::Range;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::{Value, deserialize};
use crate::diag::Diagnostic;
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
    /// offending key with a hint.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        deserialize(&self.sources, &self.table).map_err(|d| self.prefix(d).into())
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        size: [u32; 2],
        mode: Option<String>,
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
    fn dotted_keys_point_into_nested_tables() {
        let text = "command = [\"x\"]\nparams = { keywords = [], other = 1 }\n";
        let p = Params::from_toml("score", text).unwrap();
        let at = |key: &str| &text[p.span(key)];
        assert_eq!(at("params.keywords"), "[]");
        assert_eq!(at("params.missing"), "{ keywords = [], other = 1 }");
        assert_eq!(at("command"), "[\"x\"]");
    }
}
