//! Tensor rows as 8-bit images: the shared part of `sink.images` and `sink.grid`. A row of shape
//! [C, H, W] (or [H, W, C] with layout "hwc", or [H, W]) with C = 1, 3 or 4 becomes a gray, RGB or
//! RGBA image; values are mapped from `range` to 0-255, clamped and rounded.

use std::io::Cursor;

use arrow::datatypes::Field;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use pipeline::{Error, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The axis order of a tensor row, as preprocess.image writes it.
pub use pipeline::tensor::Layout;

/// The value range that maps to black..white.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
pub enum Range {
    /// 0 is black, 1 is white.
    #[default]
    #[serde(rename = "0,1")]
    Unit,
    /// -1 is black, 1 is white (tanh outputs, diffusion samples).
    #[serde(rename = "-1,1")]
    Signed,
    /// 0 is black, 255 is white.
    #[serde(rename = "0,255")]
    Byte,
}

/// The encoded file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Lossless PNG.
    #[default]
    Png,
    /// JPEG at `quality` (alpha is dropped).
    Jpeg,
}

/// How a tensor column's rows become images: its dimensions and the value mapping.
#[derive(Debug, Clone, Copy)]
pub struct Raster {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    layout: Layout,
    range: Range,
}

/// An 8-bit image, interleaved (HWC).
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Raster {
    /// Checks at validate time that `field` (named by param `key`) is a tensor column that can be
    /// drawn with `layout`.
    pub fn for_field(key: &str, field: &Field, layout: Layout, range: Range) -> Result<Raster> {
        let shape = pipeline::tensor::tensor_shape(field).ok_or_else(|| {
            Error::config(key, format!("column `{}` is {}, not a tensor", field.name(), field.data_type()))
        })?;
        let Some((c, h, w)) = layout.dimensions(&shape) else {
            return Err(Error::config(key, format!("column `{}` has shape {shape:?}", field.name()))
                .with_hint("an image tensor is [C, H, W] (layout \"chw\"), [H, W, C] (\"hwc\") or [H, W]"));
        };
        if !matches!(c, 1 | 3 | 4) {
            return Err(Error::config(key, format!("column `{}` has {c} channels (shape {shape:?})", field.name()))
                .with_hint("images have 1 (gray), 3 (RGB) or 4 (RGBA) channels; check `layout`"));
        }
        Ok(Raster { width: w as u32, height: h as u32, channels: c, layout, range })
    }

    /// One row's values as an 8-bit image.
    pub fn pixels(&self, values: &[f32]) -> Pixels {
        let (c, hw) = (self.channels, (self.width * self.height) as usize);
        let mut data = vec![0u8; hw * c];
        let map = |v: f32| -> u8 {
            let v = match self.range {
                Range::Unit => v * 255.0,
                Range::Signed => (v + 1.0) * 127.5,
                Range::Byte => v,
            };
            if v.is_nan() { 0 } else { v.round().clamp(0.0, 255.0) as u8 }
        };
        for i in 0..hw {
            for ch in 0..c {
                data[i * c + ch] = map(values[self.layout.index(i, ch, hw, c)]);
            }
        }
        Pixels { width: self.width, height: self.height, channels: c, data }
    }
}

impl Pixels {
    /// The image encoded as PNG or JPEG.
    pub fn encode(&self, format: Format, quality: u8) -> std::result::Result<Vec<u8>, String> {
        let color = match self.channels {
            1 => ExtendedColorType::L8,
            3 => ExtendedColorType::Rgb8,
            _ => ExtendedColorType::Rgba8,
        };
        let mut out = Vec::new();
        match format {
            Format::Png => PngEncoder::new(Cursor::new(&mut out))
                .write_image(&self.data, self.width, self.height, color)
                .map_err(|e| format!("cannot encode PNG: {e}"))?,
            Format::Jpeg => {
                let (data, color) = if self.channels == 4 {
                    let rgb: Vec<u8> = self.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                    (rgb, ExtendedColorType::Rgb8)
                } else {
                    (self.data.clone(), color)
                };
                JpegEncoder::new_with_quality(Cursor::new(&mut out), quality)
                    .write_image(&data, self.width, self.height, color)
                    .map_err(|e| format!("cannot encode JPEG: {e}"))?
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_bytes_and_clamp() {
        let field = pipeline::tensor::tensor_field("x", &[1, 1, 4]);
        let r = Raster::for_field("column", &field, Layout::Chw, Range::Signed).unwrap();
        assert_eq!(r.pixels(&[-1.0, 0.0, 1.0, 7.0]).data, vec![0, 128, 255, 255]);
        let r = Raster::for_field("column", &field, Layout::Chw, Range::Unit).unwrap();
        assert_eq!(r.pixels(&[-0.5, 0.5, f32::NAN, 1.0]).data, vec![0, 128, 0, 255]);
    }

    #[test]
    fn chw_is_interleaved() {
        let field = pipeline::tensor::tensor_field("x", &[3, 1, 2]);
        let r = Raster::for_field("column", &field, Layout::Chw, Range::Byte).unwrap();
        assert_eq!(r.pixels(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).data, vec![1, 3, 5, 2, 4, 6]);
        let bad = pipeline::tensor::tensor_field("x", &[2, 4, 4]);
        assert!(Raster::for_field("column", &bad, Layout::Chw, Range::Byte).is_err());
    }
}
