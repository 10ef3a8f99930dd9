//! preprocess.image against Pillow (within 1/255 per pixel), corrupt and oversized images as
//! per-item errors, and sink.images / sink.grid writing tensors back to PNG. The Pillow reference
//! comes from tests/fixtures/images/make_fixtures.py.

mod common;

use std::path::{Path, PathBuf};

use arrow::array::{Array, FixedSizeListArray, Float32Array, StringArray};
use common::{pipe_output, read_parquet, repo, text, write};

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/images")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

/// collect.files over the fixture images -> preprocess.image with `keys` -> sink.table.
fn pipeline(keys: &str, include: &str, on_error: &str) -> String {
    format!(
        r#"[pipeline]
name = "images"
batch_size = 3
on_error = "{on_error}"
max_rejects = -1

[[stage]]
id = "files"
uses = "collect.files"
path = "{dir}/images"
include = {include}

[[stage]]
id = "pixels"
uses = "preprocess.image"
{keys}

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
columns = ["id", "pixels"]
"#,
        dir = fixtures().display()
    )
}

fn run_ok(dir: &Path, pipeline_text: &str) -> arrow::record_batch::RecordBatch {
    write(dir, "p.toml", pipeline_text);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_parquet(&dir.join("out/out.parquet"))
}

fn tensor_rows(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<Vec<f32>> {
    let list = batch.column_by_name(column).unwrap().as_any().downcast_ref::<FixedSizeListArray>();
    let list = list.cloned().unwrap_or_else(|| {
        // Parquet brings tensors back as lists; rebuild the fixed-size view.
        let l =
            batch.column_by_name(column).unwrap().as_any().downcast_ref::<arrow::array::ListArray>().unwrap().clone();
        let width = l.value_length(0);
        FixedSizeListArray::new(
            std::sync::Arc::new(arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Float32, true)),
            width,
            l.values().clone(),
            None,
        )
    });
    let values = list.values().as_any().downcast_ref::<Float32Array>().unwrap();
    let w = list.value_length() as usize;
    (0..list.len()).map(|r| values.values()[r * w..(r + 1) * w].to_vec()).collect()
}

fn ids(batch: &arrow::record_batch::RecordBatch) -> Vec<String> {
    let a = batch.column_by_name("id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|r| a.value(r).to_string()).collect()
}

#[test]
fn pixels_match_pillow_within_one_level() {
    let reference = reference();
    let names: Vec<String> =
        reference["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let include = format!("{names:?}");
    for case in reference["cases"].as_array().unwrap() {
        let keys = format!(
            "size = {}\nresize = {}\nfilter = {}\nmode = {}\nlayout = {}\nscale = 1.0",
            case["size"], case["resize"], case["filter"], case["mode"], case["layout"]
        );
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(dir.path(), &pipeline(&keys, &include, "fail"));
        let got = tensor_rows(&out, "pixels");
        for (id, values) in ids(&out).iter().zip(&got) {
            let expected: Vec<f32> =
                case["expected"][id].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(values.len(), expected.len(), "{} {id}", case["name"]);
            let worst = values.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // Bilinear (the default) is held to one level; Lanczos's negative lobes round
            // differently in the two fixed-point implementations, by a few levels at most.
            let limit = if case["filter"] == "bilinear" { 1.0 } else { 3.0 };
            assert!(worst <= limit, "{} {id}: a pixel differs from Pillow's by {worst}", case["name"]);
        }
        assert_eq!(got.len(), names.len());
    }
}

#[test]
fn normalization_is_scale_then_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    let plain = run_ok(dir.path(), &pipeline("size = [8, 6]\nscale = 1.0", "[\"photo.png\"]", "fail"));
    let dir = tempfile::tempdir().unwrap();
    let keys = "size = [8, 6]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]";
    let normalized = run_ok(dir.path(), &pipeline(keys, "[\"photo.png\"]", "fail"));
    let (p, n) = (&tensor_rows(&plain, "pixels")[0], &tensor_rows(&normalized, "pixels")[0]);
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    for (i, (raw, got)) in p.iter().zip(n).enumerate() {
        let c = i / 48;
        let want = (raw / 255.0 - mean[c]) / std[c];
        assert!((want - got).abs() < 1e-5, "value {i}: {got} != {want}");
    }
}

#[test]
fn a_corrupt_image_is_a_per_item_error() {
    let include = "[\"photo.png\", \"corrupt.png\", \"photo-gray.png\"]";
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(dir.path(), &pipeline("size = [8, 8]", include, "skip"));
    assert_eq!(ids(&out), vec!["photo-gray.png", "photo.png"]);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(rejects.contains("\"id\":\"corrupt.png\"") && rejects.contains("pixels"), "{rejects}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", pipeline("size = [8, 8]", include, "fail"));
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("corrupt.png"), "{}", text(&out));
    assert!(!dir.path().join("out/out.parquet").exists(), "nothing committed after a failure");
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        dir.path(),
        &pipeline("size = [8, 8]\nmax_pixels = 1000", "[\"photo.png\", \"photo-gray.png\"]", "skip"),
    );
    assert_eq!(out.num_rows(), 0);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 2);
    assert!(rejects.contains("61x47 is 2867 pixels, more than max_pixels (1000)"), "{rejects}");
}

#[test]
fn bad_image_configs_fail_at_validate_time() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, expected) in [
        ("size = [8, 8]\nmean = [0.1, 0.2]", "2 values for 3 channel(s)"),
        ("size = [0, 8]", "at least 1"),
        ("size = [8, 8]\nresize = \"crop\"", "stretch"),
        ("size = [8, 8]\ncolumn = \"path\"", "Binary"),
    ] {
        write(dir.path(), "p.toml", pipeline(keys, "[\"photo.png\"]", "fail"));
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{keys}: {}", text(&out));
        assert!(text(&out).contains(expected), "{keys}: {}", text(&out));
    }
}

#[test]
fn tensors_round_trip_through_sink_images_and_grid() {
    let dir = tempfile::tempdir().unwrap();
    let text_of_pipeline = format!(
        r#"[pipeline]
name = "round-trip"

[[stage]]
id = "files"
uses = "collect.files"
path = "{dir}/images"
include = ["photo.png", "photo-gray.png"]

[[stage]]
id = "pixels"
uses = "preprocess.image"
size = [61, 47]
scale = 1.0

[[stage]]
id = "images"
uses = "sink.images"
column = "pixels"
range = "0,255"
name = "{{id}}"

[[stage]]
id = "grid"
uses = "sink.grid"
column = "pixels"
range = "0,255"
columns = 2
scale = 2
caption = "{{id}}"
"#,
        dir = fixtures().display()
    );
    write(dir.path(), "p.toml", text_of_pipeline);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Same size and no resampling: the written PNG has the source's pixels exactly.
    let original = image::open(fixtures().join("images/photo.png")).unwrap().to_rgb8();
    let written = image::open(dir.path().join("out/images/photo.png")).unwrap().to_rgb8();
    assert_eq!(original.dimensions(), written.dimensions());
    assert_eq!(original.as_raw(), written.as_raw());
    let grid = image::open(dir.path().join("out/grid.png")).unwrap().to_rgb8();
    // Two cells of 122x94 side by side with 2-pixel gaps, and a caption strip under them.
    assert_eq!(grid.width(), 2 + 2 * (122 + 2));
    assert!(grid.height() > 2 + 94 + 2);
    // The first cell is photo-gray.png (sorted ids), upscaled twice.
    let gray = image::open(fixtures().join("images/photo-gray.png")).unwrap().to_rgb8();
    assert_eq!(grid.get_pixel(2 + 2 * 10, 2 + 2 * 7), gray.get_pixel(10, 7));
    assert_eq!(grid.get_pixel(2 + 124 + 2 * 10 + 1, 2 + 2 * 7 + 1), original.get_pixel(10, 7));
}
