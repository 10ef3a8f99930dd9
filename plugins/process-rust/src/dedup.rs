//! The deduplication itself, free of any protocol concerns: checking the params against the
//! input schema, normalizing text, fingerprinting it, and filtering batches against the
//! fingerprints seen so far.
//!
//! # Fingerprints
//!
//! Each text is reduced to a 128-bit fingerprint: two 64-bit SipHash-1-3 values (std's
//! `DefaultHasher`, via two `RandomState`s, so two different random keys). Only fingerprints are
//! kept, 16 bytes per distinct text whatever its length, so memory grows with the number of
//! distinct texts, not their size (20 to 40 bytes each with the hash set's overhead: 2 to 4 GB
//! per 100 million distinct rows). Two different texts are taken for duplicates only if both
//! hashes collide, which for n distinct texts happens with probability about n² / 2¹²⁹:
//! negligible for any dataset. The keys are random per process, so nobody can craft texts that
//! collide on purpose; the fingerprints mean nothing outside the process, and nothing is stored.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema};
use serde_json::Value;

/// The params keys this plugin knows, for the hint on an unknown one.
const KNOWN_PARAMS: &str = "column (a Utf8 column name, default \"text\"), normalize (bool, default true)";

/// A configuration error, sent back to pipe as an `error` message.
#[derive(Debug, PartialEq)]
pub struct ConfigError {
    /// The params key at fault, if any: pipe points its diagnostic at that key's line.
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    fn new(key: Option<&str>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ConfigError { key: key.map(str::to_string), message: message.into(), hint: Some(hint.into()) }
    }
}

/// The stage's params, checked.
#[derive(Debug, PartialEq)]
pub struct Params {
    /// The text column whose duplicates are dropped.
    pub column: String,
    /// Whether to lowercase and collapse whitespace before comparing.
    pub normalize: bool,
}

impl Params {
    /// Checks `params` (the stage's `params` table as JSON; null or absent means all defaults)
    /// against the input schema.
    pub fn parse(params: &Value, input: &Schema) -> Result<Params, ConfigError> {
        let mut parsed = Params { column: "text".to_string(), normalize: true };
        let table = match params {
            Value::Null => return parsed.check_column(input),
            Value::Object(table) => table,
            _ => return Err(ConfigError::new(None, "params must be a table", "params = { column = \"text\" }")),
        };
        for (key, value) in table {
            match (key.as_str(), value) {
                ("column", Value::String(name)) => parsed.column = name.clone(),
                ("column", _) => {
                    return Err(ConfigError::new(
                        Some("column"),
                        "must be a string: the name of a Utf8 column",
                        "column = \"text\"",
                    ));
                }
                ("normalize", Value::Bool(on)) => parsed.normalize = *on,
                ("normalize", _) => {
                    return Err(ConfigError::new(Some("normalize"), "must be true or false", "normalize = false"));
                }
                _ => {
                    return Err(ConfigError::new(
                        Some(key),
                        format!("unknown param `{key}`"),
                        format!("known params: {KNOWN_PARAMS}"),
                    ));
                }
            }
        }
        parsed.check_column(input)
    }

    /// The column must exist and hold text; the schema must have the `id` column the protocol
    /// names rows by (the output schema is the input schema, and it must have one too).
    fn check_column(self, input: &Schema) -> Result<Params, ConfigError> {
        if !matches!(input.field_with_name("id").map(|f| f.data_type()), Ok(DataType::Utf8)) {
            return Err(ConfigError {
                key: None,
                message: "the input has no Utf8 `id` column".to_string(),
                hint: None,
            });
        }
        let found = input.field_with_name(&self.column).ok().map(|f| f.data_type().clone());
        if matches!(found, Some(DataType::Utf8 | DataType::LargeUtf8)) {
            return Ok(self);
        }
        let text_columns: Vec<&str> = input
            .fields()
            .iter()
            .filter(|f| f.name() != "id" && matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8))
            .map(|f| f.name().as_str())
            .collect();
        let hint = if text_columns.is_empty() {
            "the input has no Utf8 column besides `id`".to_string()
        } else {
            format!("Utf8 columns in the input: {}", text_columns.join(", "))
        };
        let message = match found {
            None => format!("no column `{}` in the input", self.column),
            Some(other) => format!("column `{}` is {other}, not Utf8", self.column),
        };
        Err(ConfigError::new(Some("column"), message, hint))
    }
}

/// Lowercases `text` and collapses every run of whitespace into one space, dropping leading and
/// trailing whitespace: "  Hello\n  WORLD " becomes "hello world".
pub fn normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    for word in lower.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Two independently keyed SipHash-1-3 hashers making one 128-bit fingerprint (see the module
/// docs).
pub struct Fingerprinter {
    high: RandomState,
    low: RandomState,
}

impl Fingerprinter {
    pub fn new() -> Self {
        Fingerprinter { high: RandomState::new(), low: RandomState::new() }
    }

    pub fn fingerprint(&self, text: &str) -> u128 {
        (u128::from(self.high.hash_one(text)) << 64) | u128::from(self.low.hash_one(text))
    }
}

/// A row of a batch that failed: its id and why.
#[derive(Debug, PartialEq)]
pub struct RowError {
    pub id: String,
    pub reason: &'static str,
}

/// The streaming state: the fingerprints of every text kept so far, across batches.
pub struct Dedup {
    params: Params,
    fingerprints: Fingerprinter,
    seen: HashSet<u128>,
    /// Batches seen; rows read, rows kept, rows dropped as duplicates, rows failed for a null
    /// text.
    pub batches: u64,
    pub rows_in: u64,
    pub kept: u64,
    pub duplicates: u64,
    pub nulls: u64,
}

impl Dedup {
    pub fn new(params: Params) -> Self {
        Dedup {
            params,
            fingerprints: Fingerprinter::new(),
            seen: HashSet::new(),
            batches: 0,
            rows_in: 0,
            kept: 0,
            duplicates: 0,
            nulls: 0,
        }
    }

    /// Keeps the rows of `batch` whose text was not seen before (in this batch or an earlier
    /// one), and reports rows with a null text as errors (they are not kept). Err is a message for
    /// a batch that cannot be handled at all.
    pub fn filter(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<RowError>), String> {
        let texts = batch
            .column_by_name(&self.params.column)
            .ok_or_else(|| format!("the batch has no column `{}`", self.params.column))?;
        let ids: &StringArray =
            batch.column_by_name("id").and_then(|c| c.as_string_opt()).ok_or("the batch has no Utf8 `id` column")?;
        let texts: Box<dyn Iterator<Item = Option<&str>>> = match texts.data_type() {
            DataType::Utf8 => Box::new(texts.as_string::<i32>().iter()),
            DataType::LargeUtf8 => Box::new(texts.as_string::<i64>().iter()),
            other => return Err(format!("column `{}` is {other}, not Utf8", self.params.column)),
        };

        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut errors = Vec::new();
        for (row, text) in texts.enumerate() {
            let Some(text) = text else {
                errors.push(RowError { id: ids.value(row).to_string(), reason: "null text" });
                keep.push(false);
                continue;
            };
            let fingerprint = if self.params.normalize {
                self.fingerprints.fingerprint(&normalize(text))
            } else {
                self.fingerprints.fingerprint(text)
            };
            keep.push(self.seen.insert(fingerprint));
        }

        let kept = keep.iter().filter(|k| **k).count() as u64;
        self.batches += 1;
        self.rows_in += batch.num_rows() as u64;
        self.kept += kept;
        self.nulls += errors.len() as u64;
        self.duplicates += batch.num_rows() as u64 - kept - errors.len() as u64;
        let kept = filter_record_batch(batch, &BooleanArray::from(keep)).map_err(|e| e.to_string())?;
        Ok((kept, errors))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, LargeStringArray};
    use arrow::datatypes::Field;
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
            Field::new("title", DataType::LargeUtf8, true),
            Field::new("n", DataType::Int64, true),
        ])
    }

    fn batch(ids: &[&str], texts: &[Option<&str>]) -> RecordBatch {
        let n = ids.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(StringArray::from(texts.to_vec())),
            Arc::new(LargeStringArray::from(texts.to_vec())),
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(Arc::new(schema()), columns).unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<&str> {
        batch.column_by_name("id").unwrap().as_string::<i32>().iter().map(Option::unwrap).collect()
    }

    #[test]
    fn normalize_lowercases_and_collapses_whitespace() {
        assert_eq!(normalize("  Hello\n\t WORLD  "), "hello world");
        assert_eq!(normalize("ÉCOLE  Ünïcode"), "école ünïcode");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \n "), "");
        assert_eq!(normalize("a b"), "a b");
        assert_ne!(normalize("ab"), normalize("a b"));
    }

    #[test]
    fn fingerprints_are_stable_within_a_process_and_tell_texts_apart() {
        let f = Fingerprinter::new();
        assert_eq!(f.fingerprint("hello"), f.fingerprint("hello"));
        assert_ne!(f.fingerprint("hello"), f.fingerprint("hello "));
        assert_ne!(f.fingerprint(""), f.fingerprint(" "));
        // The two halves come from differently keyed hashers.
        let fp = f.fingerprint("hello");
        assert_ne!((fp >> 64) as u64, fp as u64);
        // No collisions among many similar texts.
        let distinct: HashSet<u128> = (0..100_000).map(|i| f.fingerprint(&format!("row {i}"))).collect();
        assert_eq!(distinct.len(), 100_000);
    }

    #[test]
    fn params_default_and_explicit() {
        let s = schema();
        assert_eq!(Params::parse(&Value::Null, &s), Ok(Params { column: "text".into(), normalize: true }));
        assert_eq!(Params::parse(&json!({}), &s), Ok(Params { column: "text".into(), normalize: true }));
        assert_eq!(
            Params::parse(&json!({"column": "title", "normalize": false}), &s),
            Ok(Params { column: "title".into(), normalize: false })
        );
    }

    #[test]
    fn params_errors_name_their_key() {
        let s = schema();
        let err = |v: Value| Params::parse(&v, &s).unwrap_err();
        let missing = err(json!({"column": "body"}));
        assert_eq!(missing.key.as_deref(), Some("column"));
        assert_eq!(missing.message, "no column `body` in the input");
        assert_eq!(missing.hint.as_deref(), Some("Utf8 columns in the input: text, title"));
        let wrong_type = err(json!({"column": "n"}));
        assert_eq!(wrong_type.key.as_deref(), Some("column"));
        assert_eq!(wrong_type.message, "column `n` is Int64, not Utf8");
        assert_eq!(err(json!({"column": 3})).key.as_deref(), Some("column"));
        assert_eq!(err(json!({"normalize": "yes"})).key.as_deref(), Some("normalize"));
        let unknown = err(json!({"colum": "text"}));
        assert_eq!(unknown.key.as_deref(), Some("colum"));
        assert!(unknown.hint.unwrap().contains("column"));
        assert_eq!(err(json!(["text"])).key, None);
        let no_id = Schema::new(vec![Field::new("text", DataType::Utf8, true)]);
        assert_eq!(Params::parse(&Value::Null, &no_id).unwrap_err().message, "the input has no Utf8 `id` column");
    }

    #[test]
    fn drops_duplicates_across_batches_and_reports_nulls() {
        let mut dedup = Dedup::new(Params { column: "text".into(), normalize: true });
        let (kept, errors) = dedup
            .filter(&batch(&["a", "b", "c", "d"], &[Some("Hi  there"), Some("hi there"), None, Some("x")]))
            .unwrap();
        assert_eq!(ids(&kept), ["a", "d"]);
        assert_eq!(errors, [RowError { id: "c".into(), reason: "null text" }]);
        let (kept, errors) = dedup.filter(&batch(&["e", "f"], &[Some(" X "), Some("y")])).unwrap();
        assert_eq!(ids(&kept), ["f"]);
        assert!(errors.is_empty());
        assert_eq!((dedup.rows_in, dedup.kept, dedup.duplicates, dedup.nulls), (6, 3, 2, 1));
        assert_eq!(kept.schema(), Arc::new(schema()));
    }

    #[test]
    fn exact_comparison_without_normalize_and_large_utf8() {
        let mut dedup = Dedup::new(Params { column: "title".into(), normalize: false });
        let (kept, _) = dedup.filter(&batch(&["a", "b", "c"], &[Some("Hi"), Some("hi"), Some("Hi")])).unwrap();
        assert_eq!(ids(&kept), ["a", "b"]);
    }
}
