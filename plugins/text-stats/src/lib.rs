//! An example custom plugin, as a user would write one: `text.stats` adds per-row counts of
//! characters, words and lines of a text column, and a BLAKE3 hash of it (for deduplication).
//!
//! The whole lifecycle in one file: [`Plugin::build`] parses the params, checks them against the
//! input schema and fixes the output schema; the built stage is a row-wise [`Transform`] (one row
//! out, with the same id, for each row in), so `refine.iterate` may re-run it.
//!
//! It is registered in the `pipe` binary with one line (`.add(pipe_text_stats::plugins())`) and
//! used by examples/text-stats. plugins/README.md walks through it.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::{BuildContext, Emitter, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform};
use schemars::JsonSchema;
use serde::Deserialize;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(TextStats)]
}

/// The `text.stats` plugin.
pub struct TextStats;

/// Params of `text.stats`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextStatsParams {
    /// The Utf8 column to measure.
    #[serde(default = "default_column")]
    pub column: String,
    /// Put before each new column's name (e.g. "body_" gives body_words).
    #[serde(default)]
    pub prefix: String,
}

fn default_column() -> String {
    "text".to_string()
}

impl Plugin for TextStats {
    fn name(&self) -> &'static str {
        "text.stats"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Adds character, word and line counts of a text column, and its BLAKE3 hash.",
        )
        .params::<TextStatsParams>()
        .reads("<column>", "Utf8", "the text")
        .writes("chars", "UInt64", "Unicode scalar values")
        .writes("words", "UInt64", "whitespace-separated words")
        .writes("lines", "UInt64", "lines (a final line without a newline counts)")
        .writes("blake3", "Utf8", "hex BLAKE3 hash of the text's bytes")
        .example("[[stage]]\nid = \"stats\"\nuses = \"text.stats\"\ncolumn = \"text\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: TextStatsParams = params.parse()?;
        pipeline::columns::require(input, "column", &p.column, &[DataType::Utf8])?;
        let mut fields: Vec<Field> = ["chars", "words", "lines"]
            .iter()
            .map(|name| Field::new(format!("{}{name}", p.prefix), DataType::UInt64, true))
            .collect();
        fields.push(Field::new(format!("{}blake3", p.prefix), DataType::Utf8, true));
        let schema = pipeline::columns::with_outputs(input, fields);
        Ok(Stage::transform(TextStatsStage { column: p.column, schema }))
    }
}

struct TextStatsStage {
    column: String,
    /// The input's columns (less any of the new ones' names), then the four new ones.
    schema: SchemaRef,
}

impl Transform for TextStatsStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Every row comes out at once, with its id, in the batch it came in.
    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        let text = pipeline::columns::utf8(&batch, &self.column)?;
        let count = |f: fn(&str) -> usize| -> ArrayRef {
            Arc::new(text.iter().map(|t| t.map(|t| f(t) as u64)).collect::<UInt64Array>())
        };
        let hashes = text.iter().map(|t| t.map(|t| blake3::hash(t.as_bytes()).to_hex().to_string()));
        let new = vec![
            count(|t| t.chars().count()),
            count(|t| t.split_whitespace().count()),
            count(|t| t.lines().count()),
            Arc::new(hashes.collect::<StringArray>()),
        ];
        out.emit(pipeline::columns::assemble(&self.schema, &batch, new)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::Array;
    use arrow::datatypes::Schema;

    use super::*;

    #[test]
    fn counts_and_hashes() {
        let input = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let params = Params::from_toml("stats", "column = \"text\"\n").unwrap();
        let cx = BuildContext::new("stats", Path::new("."), Path::new("out"));
        let stage = TextStats.build(&params, &input, &cx).unwrap();
        assert!(matches!(&stage, Stage::Transform(t) if t.row_wise()));
        let schema = stage.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "text", "chars", "words", "lines", "blake3"]);
    }

    #[test]
    fn a_batch_driven_in_process_gets_its_counts() {
        let input = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            input.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec![Some("two words\nand a line"), None])),
            ],
        )
        .unwrap();
        let h = pipeline::testing::Harness::new("stats");
        let mut stage = h.build(&TextStats, "column = \"text\"", &input).unwrap();
        let out = h.run(&mut stage, vec![batch]).unwrap();
        assert_eq!(out.rows(), 2);
        assert!(out.rejects.is_empty());
        let words = out.batches[0].column_by_name("words").unwrap();
        let words = words.as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!((words.value(0), words.is_null(1)), (5, true));
        let lines = out.batches[0].column_by_name("lines").unwrap();
        assert_eq!(lines.as_any().downcast_ref::<UInt64Array>().unwrap().value(0), 2);
    }
}
