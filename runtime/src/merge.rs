//! One way for a model stage to settle each of its settings: the stage's key in the pipeline file,
//! else a field of a file that came with the model (a diffusers scheduler_config.json, a model
//! folder's genai_config.json or generation_config.json), else the stage's default.
//!
//! A [`Merge`] is filled with the files' values first ([`Merge::take`]), then asked for each
//! setting ([`Merge::value`], [`Merge::optional`]); it records where every value it gave came from
//! ([`Origin`]), so that an error about a value points where the value was written
//! ([`Merge::error`]): at the stage key, or, for a value from a file, at the stage key that names
//! the file, with the file and its field in the message.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use pipeline::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field of a file: where a setting's value was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileField {
    /// The file.
    pub path: PathBuf,
    /// The field, dotted for a nested one (`search.top_p`).
    pub field: String,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The stage's key in the pipeline file (or `--set`).
    Key,
    /// A field of a file.
    File(FileField),
    /// The stage's default.
    Default,
}

/// The settings files give, and where each merged setting came from.
#[derive(Debug, Clone)]
pub struct Merge {
    /// The stage key naming the files, where errors about their values point.
    file_key: &'static str,
    /// Per setting, the value the files give and where (the last file that gives one wins).
    found: BTreeMap<&'static str, (Value, FileField)>,
    /// Per merged setting, where its value came from.
    origins: BTreeMap<&'static str, Origin>,
}

impl Merge {
    /// An empty merge whose file values are reported at the stage key `file_key`
    /// (`scheduler_config`, `model`).
    pub fn new(file_key: &'static str) -> Self {
        Merge { file_key, found: BTreeMap::new(), origins: BTreeMap::new() }
    }

    /// Takes `field` of `json` (the contents of `path`; dotted for a nested field, `search.top_p`)
    /// as the file value of the setting `key` when it is a `T`, replacing an earlier file's. A
    /// missing or null field, or one that is not a `T`, leaves the setting as it was. Returns
    /// whether it was taken.
    pub fn take<T: DeserializeOwned>(&mut self, key: &'static str, json: &Value, path: &Path, field: &str) -> bool {
        let value = field.split('.').try_fold(json, |v, name| v.get(name)).filter(|v| !v.is_null());
        match value {
            Some(v) if T::deserialize(v).is_ok() => {
                self.found.insert(key, (v.clone(), FileField { path: path.to_path_buf(), field: field.to_string() }));
                true
            }
            _ => false,
        }
    }

    /// Sets the file value of the setting `key` to `value`, read from `field` of `path`: for a
    /// value a file gives in another form than the setting takes, or one worked out from fields.
    pub fn found<T: Serialize>(&mut self, key: &'static str, value: T, path: &Path, field: &str) {
        let value = serde_json::to_value(value).expect("a setting's value serializes");
        self.found.insert(key, (value, FileField { path: path.to_path_buf(), field: field.to_string() }));
    }

    /// The setting `key`: `explicit` (the stage's key) when given, else the files' value, else
    /// none; where it came from is recorded.
    pub fn optional<T: DeserializeOwned>(&mut self, key: &'static str, explicit: Option<T>) -> Option<T> {
        let (value, origin) = match explicit {
            Some(v) => (Some(v), Origin::Key),
            None => match self.found.get(key).and_then(|(v, at)| Some((T::deserialize(v).ok()?, at))) {
                Some((v, at)) => (Some(v), Origin::File(at.clone())),
                None => (None, Origin::Default),
            },
        };
        self.origins.insert(key, origin);
        value
    }

    /// The setting `key`: `explicit` when given, else the files' value, else `default`; where it
    /// came from is recorded.
    pub fn value<T: DeserializeOwned>(&mut self, key: &'static str, explicit: Option<T>, default: T) -> T {
        self.optional(key, explicit).unwrap_or(default)
    }

    /// Where the value given for `key` came from; `None` for a key this merge has not given.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    /// A configuration error about the value of `key`: at the stage key `key`, unless the value
    /// came from a file; then at the stage key naming the files, with the file and field first in
    /// the message. A key this merge has not given is the stage's own.
    pub fn error(&self, key: &str, message: impl Display) -> Error {
        match self.origins.get(key) {
            Some(Origin::File(at)) => {
                Error::config(self.file_key, format!("{}, field `{}`: {message}", at.path.display(), at.field))
            }
            _ => Error::config(key, message.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: &Error) -> (&str, &str) {
        match e {
            Error::Config { key: Some(k), message, .. } => (k, message),
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn a_key_beats_a_file_which_beats_the_default() {
        let first = serde_json::json!({ "top_k": 5, "top_p": 0.5, "search": { "num_beams": 4 } });
        let second = serde_json::json!({ "top_p": 0.25, "temperature": null, "num_beams": "many" });
        let mut m = Merge::new("model");
        assert!(m.take::<usize>("top_k", &first, Path::new("a.json"), "top_k"));
        assert!(m.take::<f32>("top_p", &first, Path::new("a.json"), "top_p"));
        assert!(m.take::<usize>("num_beams", &first, Path::new("a.json"), "search.num_beams"));
        // A later file replaces an earlier one's value; null and the wrong type leave it.
        assert!(m.take::<f32>("top_p", &second, Path::new("b.json"), "top_p"));
        assert!(!m.take::<f32>("temperature", &second, Path::new("b.json"), "temperature"));
        assert!(!m.take::<usize>("num_beams", &second, Path::new("b.json"), "num_beams"));
        assert!(!m.take::<usize>("top_k", &first, Path::new("a.json"), "search.top_k"));

        assert_eq!(m.value("top_k", Some(7), 0), 7);
        assert_eq!(m.origin("top_k"), Some(&Origin::Key));
        assert_eq!(m.value("top_p", None, 1.0f32), 0.25);
        assert_eq!(m.origin("top_p"), Some(&Origin::File(FileField { path: "b.json".into(), field: "top_p".into() })));
        assert_eq!(m.value("num_beams", None, 1usize), 4);
        assert_eq!(m.value("temperature", None, 1.0f32), 1.0);
        assert_eq!(m.origin("temperature"), Some(&Origin::Default));
        assert_eq!(m.optional::<i64>("pad_token_id", None), None);
        assert_eq!(m.origin("pad_token_id"), Some(&Origin::Default));
        assert_eq!(m.origin("max_length"), None);

        m.found("eos_token_id", vec![2i64, 3], Path::new("c.json"), "eos_token_id");
        assert_eq!(m.value("eos_token_id", None, Vec::<i64>::new()), [2, 3]);
    }

    #[test]
    fn an_error_points_where_the_value_was_written() {
        let json = serde_json::json!({ "beta_end": 1.5 });
        let mut m = Merge::new("scheduler_config");
        m.take::<f64>("beta_end", &json, Path::new("s/scheduler_config.json"), "beta_end");
        m.value("beta_end", None, 0.02);
        m.value("eta", Some(2.0), 0.0);
        m.value("clip_sample_range", None, 1.0);
        let e = m.error("beta_end", "betas must lie within (0, 1)");
        assert_eq!(
            key_of(&e),
            ("scheduler_config", "s/scheduler_config.json, field `beta_end`: betas must lie within (0, 1)")
        );
        assert_eq!(key_of(&m.error("eta", "bad")), ("eta", "bad"));
        assert_eq!(key_of(&m.error("clip_sample_range", "bad")), ("clip_sample_range", "bad"));
        assert_eq!(key_of(&m.error("steps", "bad")), ("steps", "bad"));
    }
}
