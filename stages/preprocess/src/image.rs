//! `preprocess.image`: encoded image bytes in, a Float32 tensor out. Each row is decoded, converted
//! to RGB or gray, resized (stretch, fit with padding, or fill with a centre crop) and normalized as
//! `(pixel * scale - mean) / std`, rows in parallel with rayon.
//!
//! The steps follow Pillow's so that a Python reference (`Image.open(..).convert(mode).resize(..)`)
//! gives the same pixels: gray is Pillow's ITU-R 601-2 luma in fixed point, and resizing is a
//! separable convolution whose support widens with the downscale factor (antialiasing), as in
//! Pillow's `resize`. An image that cannot be decoded, or whose pixel count passes `max_pixels`
//! (a decompression bomb), is a per-item error.
//!
//! Bad bytes cost only their row. The header's size is checked against `max_pixels` before any
//! pixel is decoded; a JPEG that stops before its end-of-image marker is refused (the decoder
//! would fill in the missing part without a word, where Pillow calls the file truncated); and a
//! panic in a decoder or the resizer is caught per row and becomes that row's error.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use pipeline::columns::{assemble, with_outputs, without};
use pipeline::tensor::{tensor_array, tensor_field};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// The `preprocess.image` plugin.
pub struct PreprocessImage;

/// How the image is brought to `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scale each axis to the target size, ignoring the aspect ratio.
    #[default]
    Stretch,
    /// Scale to fit inside the target keeping the aspect ratio, then pad with black, centred.
    Fit,
    /// Crop the centre to the target's aspect ratio, then scale to fill the target.
    Fill,
}

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle) convolution, antialiased when shrinking, as Pillow's BILINEAR.
    #[default]
    Bilinear,
    /// Lanczos with a = 3, as Pillow's LANCZOS.
    Lanczos3,
}

/// The colour mode of the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Three channels, red, green, blue.
    #[default]
    Rgb,
    /// One channel, ITU-R 601-2 luma (Pillow's "L").
    Gray,
}

/// The axis order of the tensor.
pub use pipeline::tensor::Layout;

/// Params of `preprocess.image`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    /// The column of encoded image bytes (PNG or JPEG).
    #[serde(default = "default_column")]
    pub column: String,
    /// The tensor column to write.
    #[serde(default = "default_into")]
    pub into: String,
    /// The output size, [width, height].
    pub size: [u32; 2],
    /// How the image is brought to `size`.
    #[serde(default)]
    pub resize: Resize,
    /// The resampling filter.
    #[serde(default)]
    pub filter: Filter,
    /// The colour mode.
    #[serde(default)]
    pub mode: Mode,
    /// The axis order of the tensor.
    #[serde(default)]
    pub layout: Layout,
    /// Multiplies each 0-255 pixel value first.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Subtracted after scaling: one value, or one per channel.
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    /// Divides after the mean: one value, or one per channel.
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    /// Images with more pixels than this are refused before they are decoded (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Whether to drop the encoded column from the output (it is usually no longer needed).
    #[serde(default)]
    pub drop_column: bool,
}

fn default_column() -> String {
    "content".to_string()
}

fn default_into() -> String {
    "pixels".to_string()
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

/// Pillow's own limit (`Image.MAX_IMAGE_PIXELS`).
fn default_max_pixels() -> u64 {
    89_478_485
}

impl Plugin for PreprocessImage {
    fn name(&self) -> &'static str {
        "preprocess.image"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    /// Each tensor from its row's bytes and the params alone: skipped for rows the cache answers.
    fn pure(&self, _params: &Params) -> bool {
        true
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Decodes PNG/JPEG bytes and turns each image into a Float32 tensor: colour mode, resize \
             (stretch, fit, fill), then (pixel * scale - mean) / std per channel, in CHW or HWC order. \
             Rows are processed in parallel. An undecodable, truncated or oversized image is a \
             per-item error (a decoder that gives up on bad bytes costs only that row).",
        )
        .params::<ImageParams>()
        .reads("<column>", "Binary", "encoded image bytes")
        .writes("<into>", "tensor [C, H, W] or [H, W, C]", "the normalized pixels")
        .example(
            "[[stage]]\nid = \"pixels\"\nuses = \"preprocess.image\"\nsize = [224, 224]\nresize = \"fill\"\n\
             mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]",
        )
    }

    fn build(&self, params: &Params, input: &SchemaRef, _cx: &BuildContext) -> Result<Stage> {
        let p: ImageParams = params.parse()?;
        let [width, height] = p.size;
        if width == 0 || height == 0 {
            return Err(Error::config("size", "width and height must be at least 1"));
        }
        if u64::from(width) * u64::from(height) > p.max_pixels {
            return Err(Error::config("size", format!("{width}x{height} is more than max_pixels ({})", p.max_pixels)));
        }
        let channels = match p.mode {
            Mode::Rgb => 3,
            Mode::Gray => 1,
        };
        pipeline::tensor::checked_len("size", &[channels, height as usize, width as usize])?;
        let per_channel = |key: &str, values: Option<Vec<f32>>, default: f32| -> Result<Vec<f32>> {
            match values {
                None => Ok(vec![default; channels]),
                Some(v) if v.len() == 1 => Ok(vec![v[0]; channels]),
                Some(v) if v.len() == channels => Ok(v),
                Some(v) => Err(Error::config(key, format!("{} values for {channels} channel(s)", v.len()))
                    .with_hint(format!("give one value, or {channels}"))),
            }
        };
        let mean = per_channel("mean", p.mean, 0.0)?;
        let std = per_channel("std", p.std, 1.0)?;
        if let Some(i) = std.iter().position(|s| *s == 0.0 || !s.is_finite()) {
            return Err(Error::config("std", format!("std[{i}] is {}; it must be a non-zero number", std[i])));
        }
        let norm = Normalize { scale: p.scale, mean, std };
        let spec = Spec {
            width,
            height,
            resize: p.resize,
            filter: p.filter,
            mode: p.mode,
            layout: p.layout,
            max_pixels: p.max_pixels,
            norm,
        };
        pipeline::columns::require(input, "column", &p.column, &[DataType::Binary])?;
        let kept = if p.drop_column { without(input, &[&p.column]) } else { input.as_ref().clone() };
        let schema = with_outputs(&kept, vec![tensor_field(&p.into, &spec.shape())]);
        Ok(Stage::transform(ImageStage { column: p.column, spec, schema }))
    }
}

/// `(pixel * scale - mean[c]) / std[c]`.
#[derive(Debug, Clone)]
struct Normalize {
    scale: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// Everything needed to turn one encoded image into tensor values.
#[derive(Debug, Clone)]
struct Spec {
    width: u32,
    height: u32,
    resize: Resize,
    filter: Filter,
    mode: Mode,
    layout: Layout,
    max_pixels: u64,
    norm: Normalize,
}

impl Spec {
    fn channels(&self) -> usize {
        match self.mode {
            Mode::Rgb => 3,
            Mode::Gray => 1,
        }
    }

    fn shape(&self) -> Vec<usize> {
        self.layout.shape(self.channels(), self.height as usize, self.width as usize)
    }

    /// Decodes, converts, resizes and normalizes every row of `bytes`, in parallel: the values of
    /// all rows (a failed row's are left as they are) and one result per row, never fewer.
    fn convert_rows(&self, column: &str, bytes: &BinaryArray) -> (Vec<f32>, Vec<std::result::Result<(), String>>) {
        let len = self.shape().iter().product::<usize>();
        let mut values = vec![0f32; bytes.len() * len];
        let results = values
            .par_chunks_mut(len)
            .enumerate()
            .map(|(row, out)| {
                if bytes.is_null(row) {
                    return Err(format!("`{column}` is empty"));
                }
                self.convert_caught(bytes.value(row), out).map_err(|reason| format!("{column}: {reason}"))
            })
            .collect();
        (values, results)
    }

    /// [`Spec::convert`], with a panic in a decoder or the resizer turned into this row's error.
    fn convert_caught(&self, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
        match pipeline::panics::catch(|| self.convert(bytes, out)) {
            Ok(result) => result,
            Err(what) => {
                Err(format!("cannot decode the image: the decoder gave up ({})", what.replace("panicked", "failed")))
            }
        }
    }

    /// Decodes, converts, resizes and normalizes one image into `out` (the row's values).
    fn convert(&self, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
        let pixels = self.pixels(bytes)?;
        let (c, hw) = (self.channels(), self.width as usize * self.height as usize);
        let norm = &self.norm;
        for (i, px) in pixels.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[self.layout.index(i, ch, hw, c)] = (f32::from(v) * norm.scale - norm.mean[ch]) / norm.std[ch];
            }
        }
        Ok(())
    }

    /// The resized 8-bit pixels, interleaved (HWC).
    fn pixels(&self, bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read the image: {e}"))?;
        let format = reader.format().ok_or("not a PNG or JPEG image")?;
        let (w, h) = reader.into_dimensions().map_err(|e| format!("cannot read the image header: {e}"))?;
        let pixels = u64::from(w) * u64::from(h);
        if pixels > self.max_pixels {
            return Err(format!("{w}x{h} is {pixels} pixels, more than max_pixels ({})", self.max_pixels));
        }
        if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
            return Err("cannot decode the image: the JPEG is truncated (it has no end-of-image marker)".to_string());
        }
        let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        reader.limits(limits);
        let decoded = reader.decode().map_err(|e| format!("cannot decode the image: {e}"))?;
        let (src, pixel_type) = match self.mode {
            Mode::Rgb => (to_rgb(decoded), PixelType::U8x3),
            Mode::Gray => (to_gray(decoded), PixelType::U8),
        };
        resize(&src, w, h, pixel_type, self)
    }
}

/// Whether JPEG bytes run to their end-of-image marker: the header segments are walked by their
/// lengths, then the entropy-coded data (where a 0xFF byte is stuffed as FF 00) up to EOI, across
/// the further segments and scans of a progressive file.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 2; // past SOI
    let mut in_scan = false;
    while at < bytes.len() {
        if bytes[at] != 0xFF {
            if !in_scan {
                return false;
            }
            match bytes[at..].iter().position(|&b| b == 0xFF) {
                Some(next) => at += next,
                None => return false,
            }
            continue;
        }
        let Some(&marker) = bytes.get(at + 1) else { return false };
        match marker {
            0xD9 => return true,
            // A fill byte before a marker; a stuffed 0xFF in the data, TEM, restart markers, SOI.
            0xFF => at += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => at += 2,
            _ => {
                let Some(length) = bytes.get(at + 2..at + 4) else { return false };
                at += 2 + usize::from(u16::from_be_bytes([length[0], length[1]]));
                in_scan = marker == 0xDA;
            }
        }
    }
    false
}

/// 8-bit RGB, alpha dropped (as Pillow's `convert("RGB")`).
fn to_rgb(image: DynamicImage) -> Vec<u8> {
    match image {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        other => other.to_rgb8().into_raw(),
    }
}

/// 8-bit gray: an 8-bit gray image as it is, anything else through RGB and Pillow's fixed-point
/// ITU-R 601-2 luma, L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
fn to_gray(image: DynamicImage) -> Vec<u8> {
    match image {
        DynamicImage::ImageLuma8(buf) => buf.into_raw(),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
            image.to_luma8().into_raw()
        }
        other => to_rgb(other)
            .chunks_exact(3)
            .map(|p| {
                ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8
            })
            .collect(),
    }
}

/// Resizes interleaved pixels to the spec's size with its resize mode and filter.
fn resize(src: &[u8], w: u32, h: u32, pixel_type: PixelType, spec: &Spec) -> std::result::Result<Vec<u8>, String> {
    let src = ImageRef::new(w, h, src, pixel_type).map_err(|e| e.to_string())?;
    let alg = match spec.filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    };
    let (tw, th) = (spec.width, spec.height);
    let mut resizer = Resizer::new();
    let run = |dst: &mut Image, options: &ResizeOptions, resizer: &mut Resizer| {
        resizer.resize(&src, dst, options).map_err(|e| format!("cannot resize: {e}"))
    };
    match spec.resize {
        Resize::Stretch => {
            let mut dst = Image::new(tw, th, pixel_type);
            run(&mut dst, &ResizeOptions::new().resize_alg(alg), &mut resizer)?;
            Ok(dst.into_vec())
        }
        Resize::Fill => {
            // The largest centred box of the target's aspect ratio, in source pixels.
            let (sw, sh) = (f64::from(w), f64::from(h));
            let target = f64::from(tw) / f64::from(th);
            let (cw, ch) = if sw / sh > target { (sh * target, sh) } else { (sw, sw / target) };
            let options = ResizeOptions::new().resize_alg(alg).crop((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch);
            let mut dst = Image::new(tw, th, pixel_type);
            run(&mut dst, &options, &mut resizer)?;
            Ok(dst.into_vec())
        }
        Resize::Fit => {
            // As Pillow's ImageOps.pad: the long side fills the target, the other is rounded
            // (half to even), and the image is centred on black.
            let (iw, ih) = if u64::from(w) * u64::from(th) > u64::from(h) * u64::from(tw) {
                (tw, ((f64::from(h) / f64::from(w) * f64::from(tw)).round_ties_even() as u32).clamp(1, th))
            } else {
                (((f64::from(w) / f64::from(h) * f64::from(th)).round_ties_even() as u32).clamp(1, tw), th)
            };
            let mut inner = Image::new(iw, ih, pixel_type);
            run(&mut inner, &ResizeOptions::new().resize_alg(alg), &mut resizer)?;
            let c = spec.channels();
            let centre = |free: u32| (f64::from(free) * 0.5).round_ties_even() as usize;
            let (left, top) = (centre(tw - iw), centre(th - ih));
            let mut out = vec![0u8; (tw * th) as usize * c];
            let row = iw as usize * c;
            for (y, line) in inner.buffer().chunks_exact(row).enumerate() {
                let at = ((top + y) * tw as usize + left) * c;
                out[at..at + row].copy_from_slice(line);
            }
            Ok(out)
        }
    }
}

struct ImageStage {
    column: String,
    spec: Spec,
    /// The input's columns (less `column` with drop_column, less `into`), then `into`.
    schema: SchemaRef,
}

impl Transform for ImageStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One tensor per row given, or that row rejected.
    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let column = pipeline::columns::column(&batch, &self.column)?;
        let bytes = column
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| Error::msg(format!("column `{}` is not Binary", self.column)))?;
        let len = self.spec.shape().iter().product::<usize>();
        let (mut values, results) = self.spec.convert_rows(&self.column, bytes);
        let keep = cx.reject_failed(&batch, &results)?;
        if keep.true_count() < batch.num_rows() {
            values = values
                .chunks_exact(len)
                .zip(keep.values().iter())
                .filter(|(_, k)| *k)
                .flat_map(|(v, _)| v)
                .copied()
                .collect();
        }
        let tensor = Arc::new(tensor_array(values, &self.spec.shape())?);
        let batch = arrow::compute::filter_record_batch(&batch, &keep)?;
        if keep.true_count() == 0 {
            return Ok(());
        }
        out.emit(assemble(&self.schema, &batch, vec![tensor])?)
    }
}

#[cfg(test)]
mod bad_bytes;
