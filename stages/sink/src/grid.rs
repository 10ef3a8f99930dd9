//! `sink.grid`: the rows' images tiled into one contact sheet, `columns` across, in row order, each
//! upscaled `scale` times (nearest) and optionally captioned from a template. The first `limit`
//! images are kept; the sheet is written atomically when the stream ends, from the rows committed
//! in the run journal (those of an interrupted run this one continues included), in canonical
//! order, so a resumed run draws the sheet an uninterrupted one draws.

use std::path::PathBuf;

use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::tensor::tensor_values;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
    write_atomic,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::font;
use crate::raster::{Format, Layout, Pixels, Range, Raster};
use crate::template::Template;

/// The `sink.grid` plugin.
pub struct SinkGrid;

/// Params of `sink.grid`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GridParams {
    /// The tensor column holding each row's image ([C, H, W], [H, W, C] or [H, W]).
    pub column: String,
    /// The axis order of the tensor.
    #[serde(default)]
    pub layout: Layout,
    /// The value range that maps to black..white; values outside are clamped.
    #[serde(default)]
    pub range: Range,
    /// The sheet's file, under the output folder (.png, or .jpg/.jpeg). An `s3://`, `gs://` or
    /// `az://` URL is written locally under the output folder's `.pipe-remote/out/` first and
    /// uploaded whole when the sheet is drawn.
    #[serde(default = "default_path")]
    pub path: String,
    /// Images per grid row.
    #[serde(default = "default_columns")]
    pub columns: u32,
    /// Integer upscaling of each image (nearest neighbour).
    #[serde(default = "default_scale")]
    pub scale: u32,
    /// A caption under each image; `{column}` placeholders take the row's values. Drawn with a
    /// small built-in font (digits, letters, common punctuation), cut to the image's width.
    pub caption: Option<String>,
    /// Pixels of space between images.
    #[serde(default = "default_gap")]
    pub gap: u32,
    /// At most this many images are drawn (the first ones); later rows pass on undrawn.
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_path() -> String {
    "grid.png".to_string()
}

/// Images per grid row, in sink.grid and sink.report.
pub(crate) fn default_columns() -> u32 {
    8
}

fn default_scale() -> u32 {
    1
}

fn default_gap() -> u32 {
    2
}

fn default_limit() -> usize {
    1024
}

impl Plugin for SinkGrid {
    fn name(&self) -> &'static str {
        "sink.grid"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Tiles the rows' images into one PNG or JPEG, `columns` across in row order, upscaled \
             `scale` times, with optional captions. Written atomically when the stream ends; rows \
             pass on unchanged. `path` may be an s3://, gs:// or az:// URL: the sheet is staged \
             locally and uploaded whole (multipart) once drawn. It needs every row, so it is refused under `pipe run --shard`: draw \
             the grid from the merged output in an unsharded run.",
        )
        .params::<GridParams>()
        .reads("<column>", "tensor", "the image")
        .example("[[stage]]\nid = \"grid\"\nuses = \"sink.grid\"\ncolumn = \"sample\"\nrange = \"-1,1\"\ncolumns = 10\nscale = 4\ncaption = \"{label}\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        pipeline::shard::refuse_under_shard(
            cx,
            self.name(),
            "leave it out of the sharded pipeline, and draw the grid from the merged output in an unsharded run \
             (collect.table over the shards' table parts, then sink.grid)",
        )?;
        let p: GridParams = params.parse()?;
        for (key, value) in [("columns", p.columns), ("scale", p.scale)] {
            if value == 0 {
                return Err(Error::config(key, format!("{key} must be at least 1")));
            }
        }
        if p.scale > 64 {
            return Err(Error::config("scale", format!("scale {} is more than 64", p.scale)));
        }
        if p.gap > 1024 {
            return Err(Error::config("gap", format!("gap {} is more than 1024 pixels", p.gap)));
        }
        let (path, upload) = pipeline::storage::sink_target(cx, "path", &p.path)?;
        let format = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Format::Png,
            Some("jpg" | "jpeg") => Format::Jpeg,
            _ => {
                return Err(Error::config("path", format!("cannot tell the format of \"{}\"", p.path))
                    .with_hint("use a .png, .jpg or .jpeg file name"));
            }
        };
        let cells = Cells::new(p.caption.as_deref(), p.limit)?;
        let field = pipeline::columns::require(input, "column", &p.column, &[])?;
        let raster = Raster::for_field("column", field, p.layout, p.range)?;
        cells.check(input)?;
        Ok(Stage::transform(GridSink {
            column: p.column,
            path,
            format,
            columns: p.columns,
            scale: p.scale,
            gap: p.gap,
            cells,
            raster,
            schema: input.clone(),
            upload,
        }))
    }
}

struct GridSink {
    column: String,
    /// The sheet's local file (staged when `path` is a URL).
    path: PathBuf,
    format: Format,
    columns: u32,
    scale: u32,
    gap: u32,
    cells: Cells,
    raster: Raster,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    /// Where the sheet is uploaded once written, when `path` is a URL.
    upload: Option<pipeline::storage::Upload>,
}

impl Transform for GridSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let fresh = cx.journal().uncommitted(&batch)?;
        let (part, part_ids) = self.cells.part(&fresh, &self.column)?;
        cx.journal().commit(pipeline::columns::ids(&fresh)?, &[("cells", &part, &part_ids)])?;
        out.emit(batch)
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.cells.load(&self.raster, cx)?;
        let sheet = self.cells.compose(&self.raster, self.columns, self.scale, self.gap).map_err(Error::msg)?;
        let bytes = sheet.encode(self.format, 95).map_err(Error::msg)?;
        write_atomic(&self.path, &bytes)?;
        match &self.upload {
            Some(upload) => upload.remote.upload(&self.path, ""),
            None => Ok(()),
        }
    }
}

/// The images of a grid, gathered as rows stream by: the first `limit` rows with an image, each
/// with its caption. Used by sink.grid and sink.report. Rows are committed to the run journal as
/// they arrive (the images of the first `limit` of them as the part "cells": the tensor and the
/// rendered caption) and drawn at the end from what was committed, in canonical order.
pub(crate) struct Cells {
    caption: Option<Template>,
    limit: usize,
    /// Rows this run committed as cells.
    committed: usize,
    cells: Vec<(Pixels, String)>,
}

impl Cells {
    /// Cells captioned from `caption` (a template, validated here), at most `limit` of them.
    pub(crate) fn new(caption: Option<&str>, limit: usize) -> Result<Self> {
        let caption = caption.map(|c| Template::parse("caption", c)).transpose()?;
        Ok(Self { caption, limit, committed: 0, cells: Vec::new() })
    }

    /// Checks at validate time that the caption's columns exist.
    pub(crate) fn check(&self, input: &SchemaRef) -> Result<()> {
        self.caption.as_ref().map_or(Ok(()), |c| c.check(input))
    }

    /// The part to commit for `fresh` (rows not committed yet): the images (tensor column
    /// `column`) and captions of those that may be drawn, with their ids. Each run keeps the first
    /// `limit` it sees, so the first `limit` of all runs together are among them.
    pub(crate) fn part(&mut self, fresh: &RecordBatch, column: &str) -> Result<(RecordBatch, StringArray)> {
        let fresh = fresh.clone();
        let ids = pipeline::columns::ids(&fresh)?;
        let array = pipeline::columns::column(&fresh, column)?;
        let mut keep = Vec::with_capacity(fresh.num_rows());
        let mut captions = Vec::new();
        for row in 0..fresh.num_rows() {
            let drawn = self.committed < self.limit && !array.is_null(row);
            keep.push(drawn);
            if drawn {
                self.committed += 1;
                captions.push(match &self.caption {
                    Some(t) => t.render(&fresh, row)?,
                    None => String::new(),
                });
            }
        }
        let keep = arrow::array::BooleanArray::from(keep);
        let images = arrow::compute::filter(array, &keep)?;
        let cell_ids = arrow::compute::filter(ids, &keep)?;
        let cell_ids = cell_ids.as_any().downcast_ref::<StringArray>().expect("ids are text");
        let field = fresh.schema().field_with_name(column)?.clone();
        let schema = Arc::new(Schema::new(vec![
            field,
            arrow::datatypes::Field::new("caption", arrow::datatypes::DataType::Utf8, false),
        ]));
        let part = RecordBatch::try_new(schema, vec![images, Arc::new(StringArray::from(captions))])?;
        Ok((part, cell_ids.clone()))
    }

    /// Gathers the committed images, in canonical order, up to `limit`.
    pub(crate) fn load(&mut self, raster: &Raster, cx: &mut StageContext) -> Result<()> {
        self.cells.clear();
        let limit = self.limit;
        let cells = &mut self.cells;
        cx.journal().read("cells", 256, |part| {
            let (values, width) = tensor_values(part.column(0).as_ref())?;
            let captions = part.column(1).as_any().downcast_ref::<StringArray>().expect("captions are text");
            for row in 0..part.num_rows() {
                if cells.len() >= limit {
                    break;
                }
                cells.push((raster.pixels(&values[row * width..(row + 1) * width]), captions.value(row).to_string()));
            }
            Ok(())
        })
    }

    /// How many images were gathered.
    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// The sheet of the gathered images (see [`compose`]).
    pub(crate) fn compose(
        &self,
        raster: &Raster,
        columns: u32,
        scale: u32,
        gap: u32,
    ) -> std::result::Result<Pixels, String> {
        compose(&self.cells, raster, columns, scale, gap, self.caption.is_some())
    }
}

/// The most pixels a grid sheet may have: 2^28 (768 MiB of RGB), far past any sheet a person looks
/// at, and well within what PNG and JPEG encoders take.
pub(crate) const MAX_SHEET_PIXELS: u64 = 1 << 28;

/// Tiles `cells` into one RGB sheet on black, `columns` across, each image upscaled `scale` times
/// (nearest), `gap` pixels apart, with its caption (if any) drawn under it. A sheet past
/// [`MAX_SHEET_PIXELS`] is an error that says its size, not an allocation that aborts.
pub(crate) fn compose(
    cells: &[(Pixels, String)],
    raster: &Raster,
    columns: u32,
    scale: u32,
    gap: u32,
    captions: bool,
) -> std::result::Result<Pixels, String> {
    let s = scale;
    // Captions at half the image scale fit about eight characters under a 16-pixel image.
    let font_scale = (s / 2).clamp(1, 3);
    let caption_h = if captions { (font::HEIGHT + 2) * font_scale } else { 0 };
    let n = cells.len().max(1) as u64;
    let cols = u64::from(columns).min(n);
    let rows = n.div_ceil(cols);
    let (cw, ch) = (u64::from(raster.width) * u64::from(s), u64::from(raster.height) * u64::from(s));
    let (step_x, step_y) = (cw + u64::from(gap), ch + u64::from(caption_h) + u64::from(gap));
    let (width, height) = (cols * step_x + u64::from(gap), rows * step_y + u64::from(gap));
    if width.saturating_mul(height) > MAX_SHEET_PIXELS {
        return Err(format!(
            "a grid of {n} images, {cols} across, would be {width}x{height} pixels, more than the limit of \
             {MAX_SHEET_PIXELS}; lower limit, columns or scale"
        ));
    }
    let (cw, ch, step_x, step_y) = (cw as u32, ch as u32, step_x as u32, step_y as u32);
    let (cols, width, height) = (cols as u32, width as u32, height as u32);
    let mut data = vec![0u8; (width * height * 3) as usize];
    for (i, (cell, caption)) in cells.iter().enumerate() {
        let (gx, gy) = (i as u32 % cols, i as u32 / cols);
        let (x0, y0) = (gap + gx * step_x, gap + gy * step_y);
        for y in 0..ch {
            for x in 0..cw {
                let src = (((y / s) * cell.width + x / s) as usize) * cell.channels;
                let rgb = match cell.channels {
                    1 => [cell.data[src]; 3],
                    _ => [cell.data[src], cell.data[src + 1], cell.data[src + 2]],
                };
                let at = (((y0 + y) * width + x0 + x) * 3) as usize;
                data[at..at + 3].copy_from_slice(&rgb);
            }
        }
        if captions && !caption.is_empty() {
            font::draw(&mut data, width, x0, y0 + ch + font_scale, font_scale, cw, caption);
        }
    }
    Ok(Pixels { width, height, channels: 3, data })
}
