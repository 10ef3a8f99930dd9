//! `sink.files`: one file per row from a text or bytes column, named by a template of the row's
//! columns. Names that would leave the folder are per-item errors; files are written atomically,
//! in parallel. A `dir` that is an `s3://`, `gs://` or `az://` URL is a staged local folder
//! whose files are uploaded when the stream ends, each object whole (a multipart upload aborted
//! on failure).

use std::borrow::Cow;

use arrow::array::{BinaryArray, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::{BuildContext, Emitter, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::template::{FilePerRow, Template};

/// The `sink.files` plugin.
pub struct SinkFiles;

/// Params of `sink.files`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    /// The column to write: Utf8 text or Binary bytes.
    pub column: String,
    /// The folder, under the output folder. An `s3://`, `gs://` or `az://` URL (a prefix) is
    /// written to a staged folder under the output folder's `.pipe-remote/out/`, and its files
    /// are uploaded when the run ends, each object whole.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// The file name; `{column}` placeholders take the row's values. The result never leaves `dir`.
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_dir() -> String {
    "files".to_string()
}

fn default_name() -> String {
    "{id}.txt".to_string()
}

impl Plugin for SinkFiles {
    fn name(&self) -> &'static str {
        "sink.files"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Writes one file per row from a text or bytes column, named by a template. Each file is \
             written atomically; a name that would leave `dir` is a per-item error. `dir` may be an \
             s3://, gs:// or az:// URL: the files are staged locally and uploaded when the run ends.",
        )
        .params::<FilesParams>()
        .reads("<column>", "Utf8 or Binary", "the file contents")
        .example("[[stage]]\nid = \"write\"\nuses = \"sink.files\"\ncolumn = \"text\"\nname = \"{id}.txt\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: FilesParams = params.parse()?;
        let (dir, upload) = pipeline::storage::sink_target(cx, "dir", &p.dir)?;
        let template = Template::parse("name", &p.name)?;
        pipeline::columns::require(input, "column", &p.column, &[DataType::Utf8, DataType::Binary])?;
        template.check(input)?;
        Ok(Stage::transform(FilesSink {
            files: FilePerRow { column: p.column, dir, template },
            schema: input.clone(),
            upload,
        }))
    }
}

struct FilesSink {
    files: FilePerRow,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    /// Where the files are uploaded at the end when `dir` is a URL (`dir` is then staged).
    upload: Option<pipeline::storage::Upload>,
}

impl Transform for FilesSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let column = pipeline::columns::column(&batch, &self.files.column)?;
        let text = column.as_any().downcast_ref::<StringArray>();
        let bytes = column.as_any().downcast_ref::<BinaryArray>();
        self.files.write(&batch, out, cx, |row| {
            Ok(Cow::Borrowed(match (text, bytes) {
                (Some(t), _) => t.value(row).as_bytes(),
                (_, Some(b)) => b.value(row),
                _ => unreachable!("checked at validate time"),
            }))
        })
    }

    /// Uploads the staged files, each whole, when `dir` is a URL.
    fn finish(&mut self, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        match &self.upload {
            Some(upload) if upload.local.is_dir() => upload.remote.upload_tree(&upload.local).map(|_| ()),
            _ => Ok(()),
        }
    }
}
