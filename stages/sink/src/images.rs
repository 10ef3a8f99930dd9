//! `sink.images`: one image file per row, from a tensor column (drawn with `layout` and `range`)
//! or from a column of encoded bytes (written as they are). Files are written atomically and in
//! parallel; a name that would leave `dir` is a per-item error.

use std::borrow::Cow;

use arrow::array::BinaryArray;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::tensor::tensor_values;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::raster::{Format, Layout, Range, Raster};
use crate::template::{FilePerRow, Template};

/// The `sink.images` plugin.
pub struct SinkImages;

/// Params of `sink.images`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesParams {
    /// The column to write: a tensor [C, H, W] / [H, W, C] / [H, W] with 1, 3 or 4 channels, or
    /// Binary bytes of an encoded image (written unchanged).
    pub column: String,
    /// The axis order of the tensor.
    #[serde(default)]
    pub layout: Layout,
    /// The value range that maps to black..white; values outside are clamped.
    #[serde(default)]
    pub range: Range,
    /// The file format for tensors.
    #[serde(default)]
    pub format: Format,
    /// JPEG quality, 1-100.
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// The folder, under the output folder, or an `s3://`, `gs://` or `az://` prefix: the images
    /// are then written to a staged folder and uploaded at the end of the run, each object whole.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// The file name; `{column}` placeholders take the row's values. The result never leaves `dir`.
    pub name: Option<String>,
}

fn default_quality() -> u8 {
    90
}

fn default_dir() -> String {
    "images".to_string()
}

impl Plugin for SinkImages {
    fn name(&self) -> &'static str {
        "sink.images"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Writes one PNG or JPEG per row from a tensor column (values mapped from `range` to \
             0-255, clamped) or from encoded image bytes. Files are written atomically; a name that \
             would leave `dir` is a per-item error. Rows pass on unchanged. `dir` may be an s3://, \
             gs:// or az:// URL: the images are staged locally and uploaded when the run ends.",
        )
        .params::<ImagesParams>()
        .reads("<column>", "tensor or Binary", "the image")
        .example("[[stage]]\nid = \"images\"\nuses = \"sink.images\"\ncolumn = \"sample\"\nrange = \"-1,1\"\nname = \"{label}/{id}.png\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: ImagesParams = params.parse()?;
        if !(1..=100).contains(&p.quality) {
            return Err(Error::config("quality", format!("quality {} is not in 1..=100", p.quality)));
        }
        let (dir, upload) = match pipeline::storage::is_url(&p.dir) {
            true => {
                let upload = pipeline::storage::upload_target(&cx.output_dir, "dir", &p.dir)?;
                (upload.local.clone(), Some(upload))
            }
            false => (cx.output_path("dir", &p.dir)?, None),
        };
        let default_name = match p.format {
            Format::Png => "{id}.png",
            Format::Jpeg => "{id}.jpg",
        };
        let template = Template::parse("name", p.name.as_deref().unwrap_or(default_name))?;
        let field = pipeline::columns::require(input, "column", &p.column, &[])?;
        let raster = match field.data_type() {
            DataType::Binary => None,
            _ => Some(Raster::for_field("column", field, p.layout, p.range)?),
        };
        template.check(input)?;
        Ok(Stage::transform(ImagesSink {
            files: FilePerRow { column: p.column, dir, template },
            format: p.format,
            quality: p.quality,
            raster,
            schema: input.clone(),
            upload,
        }))
    }
}

struct ImagesSink {
    files: FilePerRow,
    format: Format,
    quality: u8,
    /// How tensor rows are drawn; `None` for a column of encoded bytes.
    raster: Option<Raster>,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    /// Where the images are uploaded at the end when `dir` is a URL (`dir` is then staged).
    upload: Option<pipeline::storage::Upload>,
}

impl Transform for ImagesSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let column = pipeline::columns::column(&batch, &self.files.column)?;
        let tensor = match self.raster {
            Some(_) => Some(tensor_values(column.as_ref())?),
            None => None,
        };
        let bytes = column.as_any().downcast_ref::<BinaryArray>();
        self.files.write(&batch, out, cx, |row| match (&self.raster, tensor, bytes) {
            (Some(raster), Some((values, width)), _) => {
                let pixels = raster.pixels(&values[row * width..(row + 1) * width]);
                Ok(Cow::Owned(pixels.encode(self.format, self.quality)?))
            }
            (_, _, Some(b)) => Ok(Cow::Borrowed(b.value(row))),
            _ => unreachable!("checked at validate time"),
        })
    }

    /// Uploads the staged images, each whole, when `dir` is a URL.
    fn finish(&mut self, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        match &self.upload {
            Some(upload) if upload.local.is_dir() => upload.remote.upload_tree(&upload.local).map(|_| ()),
            _ => Ok(()),
        }
    }
}
