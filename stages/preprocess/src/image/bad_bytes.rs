//! Bad image bytes cost only their row: truncated, bit-flipped, empty and bomb-sized images give
//! clean errors, and a property test mutates valid PNG and JPEG bytes (bit flips, truncation,
//! insertions, removals, header fields) through the per-row decode and resize path, alone and in
//! batches of good and bad rows. Its case count is `PIPE_FUZZ_CASES`, 300 when unset.

use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::BinaryArray;
use image::{DynamicImage, ImageFormat, Luma, Rgb, Rgba};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::*;

fn spec(width: u32, height: u32, resize: Resize, filter: Filter, mode: Mode, layout: Layout) -> Spec {
    let channels = if mode == Mode::Rgb { 3 } else { 1 };
    Spec {
        width,
        height,
        resize,
        filter,
        mode,
        layout,
        // Small, so that a mutated header asking for a large image is refused at once.
        max_pixels: 1 << 14,
        norm: Normalize { scale: 1.0 / 255.0, mean: vec![0.0; channels], std: vec![1.0; channels] },
    }
}

fn plain() -> Spec {
    spec(8, 6, Resize::Stretch, Filter::Bilinear, Mode::Rgb, Layout::Chw)
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// Valid images to damage: PNG in RGB, gray, RGBA and 16-bit RGB, JPEG in RGB and gray.
fn bases() -> &'static [Vec<u8>] {
    static BASES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    BASES.get_or_init(|| {
        let (w, h) = (16, 12);
        let rgb = image::RgbImage::from_fn(w, h, |x, y| Rgb([(x * 16) as u8, (y * 21) as u8, (x * y * 7) as u8]));
        let gray = image::GrayImage::from_fn(w, h, |x, y| Luma([(x * 13 + y * 5) as u8]));
        let rgba = image::RgbaImage::from_fn(w, h, |x, y| Rgba([(x * 16) as u8, 90, (y * 21) as u8, (x * 9) as u8]));
        vec![
            encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png),
            encode(DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png),
            encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
            encode(DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb.clone()).to_rgb16()), ImageFormat::Png),
            encode(DynamicImage::ImageRgb8(rgb), ImageFormat::Jpeg),
            encode(DynamicImage::ImageLuma8(gray), ImageFormat::Jpeg),
        ]
    })
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG")
}

/// PNG's CRC-32 (bitwise; the inputs are a few bytes).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Sets the size a PNG's IHDR (with its CRC fixed, so the decoder believes it) or a JPEG's frame
/// header claims; bytes too short to hold one are left as they are.
fn claim_size(bytes: &mut [u8], width: u32, height: u32) {
    if is_png(bytes) && bytes.len() >= 33 {
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    } else if let Some(sof) = bytes.windows(2).position(|w| w == [0xFF, 0xC0])
        && bytes.len() >= sof + 9
    {
        bytes[sof + 5..sof + 7].copy_from_slice(&(height as u16).to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&(width as u16).to_be_bytes());
    }
}

/// Recomputes the CRC of every whole chunk of a PNG, so that a damaged chunk reaches the code
/// behind the CRC check (inflate, unfiltering, the colour conversions) instead of failing at it.
fn fix_crcs(bytes: &mut [u8]) {
    if !is_png(bytes) {
        return;
    }
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|end| end + 4 <= bytes.len()) else { return };
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// One change to valid bytes. Positions are taken modulo the length at the time.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        count: usize,
    },
    /// A byte among the first 64 (signature, IHDR; SOI, APP0, DQT): header fields.
    Header {
        at: usize,
        value: u8,
    },
    Size {
        width: u32,
        height: u32,
    },
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match mutation {
        Mutation::Flip { at, bit } => bytes[at % len] ^= 1 << (bit % 8),
        Mutation::Truncate { keep } => bytes.truncate(keep % len),
        Mutation::Insert { at, bytes: new } => {
            let at = at % len;
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove { at, count } => {
            let at = at % len;
            bytes.drain(at..(at + count).min(len));
        }
        Mutation::Header { at, value } => bytes[at % len.min(64)] = *value,
        Mutation::Size { width, height } => claim_size(bytes, *width, *height),
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let dimension = prop_oneof![0u32..80, Just(0), 60_000u32..70_000, any::<u32>()];
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, count)| Mutation::Remove { at, count }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Header { at, value }),
        1 => (dimension.clone(), dimension).prop_map(|(width, height)| Mutation::Size { width, height }),
    ]
}

fn any_spec() -> impl Strategy<Value = Spec> {
    (
        1u32..24,
        1u32..24,
        prop_oneof![Just(Resize::Stretch), Just(Resize::Fit), Just(Resize::Fill)],
        prop_oneof![Just(Filter::Nearest), Just(Filter::Bilinear), Just(Filter::Lanczos3)],
        prop_oneof![Just(Mode::Rgb), Just(Mode::Gray)],
        prop_oneof![Just(Layout::Chw), Just(Layout::Hwc)],
    )
        .prop_map(|(w, h, resize, filter, mode, layout)| spec(w, h, resize, filter, mode, layout))
}

/// A base image with `mutations` applied; a damaged PNG gets its chunk CRCs made right again for
/// an odd `base` (half the cases), so both the CRC check and what lies behind it are fuzzed.
fn mutated(base: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = bases()[base % bases().len()].clone();
    for m in mutations {
        apply(&mut bytes, m);
    }
    if base / bases().len() % 2 == 1 {
        fix_crcs(&mut bytes);
    }
    bytes
}

/// What the rows of a property test came to.
#[derive(Default)]
struct Tally {
    tensors: AtomicUsize,
    errors: AtomicUsize,
    /// Errors that were a caught panic of a decoder or the resizer.
    caught: AtomicUsize,
}

impl Tally {
    /// Checks one row's outcome, a tensor of finite values or an error that reads like one, and
    /// counts it.
    fn check(
        &self,
        result: &std::result::Result<(), String>,
        values: &[f32],
    ) -> std::result::Result<(), TestCaseError> {
        match result {
            Ok(()) => {
                self.tensors.fetch_add(1, Ordering::Relaxed);
                prop_assert!(values.iter().all(|v| v.is_finite()), "a decoded row holds non-finite values");
            }
            Err(reason) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                prop_assert!(!reason.contains("panicked"), "{}", reason);
                if reason.contains("the decoder gave up") {
                    self.caught.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// Runs `test` on `PIPE_FUZZ_CASES` (300 when unset) values of `strategy`, drawn from the seed
/// `PIPE_FUZZ_SEED` (0 when unset, so the suite tries the same cases every run), then shows the
/// tally.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(&Tally, S::Value) -> std::result::Result<(), TestCaseError>,
) {
    let cases = std::env::var("PIPE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let seed = std::env::var("PIPE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let tally = Tally::default();
    if let Err(e) = runner.run(&strategy, |value| test(&tally, value)) {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {cases} cases, {} rows gave a tensor, {} an error ({} of them a caught panic)",
        tally.tensors.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.caught.load(Ordering::Relaxed),
    );
}

#[test]
fn mutated_images_give_a_tensor_or_an_error() {
    let strategy = (0usize..12, proptest::collection::vec(mutation(), 1..5), any_spec());
    fuzz("one row", strategy, |tally, (base, mutations, spec)| {
        let bytes = mutated(base, &mutations);
        let mut out = vec![0f32; spec.shape().iter().product()];
        let result = spec.convert_caught(&bytes, &mut out);
        tally.check(&result, &out)
    });
}

#[test]
fn a_batch_of_good_and_bad_rows_accounts_for_every_row() {
    let row = (0usize..12, proptest::collection::vec(mutation(), 0..3), proptest::bool::weighted(0.1));
    let strategy = (proptest::collection::vec(row, 1..8), any_spec());
    fuzz("batches", strategy, |tally, (rows, spec)| {
        let bytes: Vec<Vec<u8>> = rows.iter().map(|(base, m, _)| mutated(*base, m)).collect();
        let array: BinaryArray =
            bytes.iter().zip(&rows).map(|(b, (_, _, null))| (!null).then_some(b.as_slice())).collect();
        let (values, results) = spec.convert_rows("content", &array);
        let len = spec.shape().iter().product::<usize>();
        prop_assert_eq!(results.len(), rows.len());
        prop_assert_eq!(values.len(), rows.len() * len);
        for ((result, row_values), (_, mutations, null)) in results.iter().zip(values.chunks(len)).zip(&rows) {
            tally.check(result, row_values)?;
            if mutations.is_empty() && !null {
                prop_assert!(result.is_ok(), "an undamaged row failed beside damaged ones: {:?}", result);
            }
        }
        Ok(())
    });
}

fn convert(spec: &Spec, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let mut out = vec![0f32; spec.shape().iter().product()];
    spec.convert_caught(bytes, &mut out).map(|()| out)
}

#[test]
fn the_undamaged_images_decode() {
    for (i, bytes) in bases().iter().enumerate() {
        assert!(convert(&plain(), bytes).is_ok(), "base {i}: {:?}", convert(&plain(), bytes).err());
        if !is_png(bytes) {
            assert!(jpeg_is_complete(bytes), "base {i}");
            let mut trailing = bytes.clone();
            trailing.extend_from_slice(b"\0\0 data after EOI");
            assert!(jpeg_is_complete(&trailing), "base {i}: bytes after the end-of-image marker are allowed");
        }
    }
}

#[test]
fn truncated_images_are_errors_at_every_cut() {
    for (i, bytes) in bases().iter().enumerate() {
        // A PNG cut inside its final IEND chunk (12 bytes) still holds every pixel, and decodes,
        // as in Pillow; a cut anywhere before loses data. A JPEG needs its last two bytes (EOI).
        let end = if is_png(bytes) { bytes.len() - 12 } else { bytes.len() };
        for keep in (0..end).step_by(3).chain([end - 1]) {
            let err = convert(&plain(), &bytes[..keep]).err();
            assert!(err.is_some(), "base {i} cut to {keep} of {} bytes decoded", bytes.len());
            assert!(!err.unwrap().contains("panicked"));
        }
    }
}

#[test]
fn empty_and_foreign_bytes_are_errors() {
    assert_eq!(convert(&plain(), b"").unwrap_err(), "not a PNG or JPEG image");
    assert_eq!(convert(&plain(), b"just some text, not a picture\n").unwrap_err(), "not a PNG or JPEG image");
}

#[test]
fn a_flipped_bit_in_png_data_is_an_error() {
    let mut bytes = bases()[0].clone();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    bytes[idat + 10] ^= 0x10;
    let err = convert(&plain(), &bytes).unwrap_err();
    assert!(err.contains("cannot decode"), "{err}");
}

#[test]
fn flipped_bits_in_jpeg_headers_are_errors() {
    let bytes = &bases()[4];
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut wrong = bytes.clone();
    wrong[sof + 9] ^= 0x06; // the component count
    assert!(convert(&plain(), &wrong).is_err());
    let dht = bytes.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    let mut wrong = bytes.clone();
    wrong[dht + 5..dht + 21].fill(0xFF); // 255 codes of every length
    assert!(convert(&plain(), &wrong).is_err());
}

#[test]
fn a_header_claiming_a_huge_image_is_refused_before_decoding() {
    for (i, base) in [0, 4].into_iter().enumerate() {
        let mut bytes = bases()[base].clone();
        let (w, h) = if i == 0 { (100_000, 100_000) } else { (65_500, 65_500) };
        claim_size(&mut bytes, w, h);
        let started = std::time::Instant::now();
        let err = convert(&plain(), &bytes).unwrap_err();
        assert!(
            err.contains(&format!("{w}x{h} is {} pixels, more than max_pixels", u64::from(w) * u64::from(h))),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "nothing was decoded");
    }
}

#[test]
fn a_panic_while_converting_is_that_rows_error() {
    // A spec with no mean values indexes past its end: a stand-in for a decoder that panics.
    let mut broken = plain();
    broken.norm.mean.clear();
    let err = convert(&broken, &bases()[0]).unwrap_err();
    assert!(err.starts_with("cannot decode the image: the decoder gave up"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let array: BinaryArray = vec![Some(bases()[0].as_slice()), None, Some(b"".as_slice())].into_iter().collect();
    let (_, results) = broken.convert_rows("content", &array);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(Result::is_err));
    let (_, results) = plain().convert_rows("content", &array);
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1], Err("`content` is empty".to_string()));
}
