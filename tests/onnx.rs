//! model.onnx on real ONNX Runtime: outputs equal Python onnxruntime's, do not depend on the batch
//! size, fixed-batch models are padded and trimmed, and signature mismatches fail at validate time.
//! Fixtures and references come from tests/fixtures/onnx/make_fixtures.py.

mod common;

use std::path::Path;

use arrow::array::{Array, FixedSizeListArray, Float32Array};
use common::{pipe_output, read_parquet, repo, text, write};

fn fixtures() -> std::path::PathBuf {
    repo().join("tests/fixtures/onnx")
}

fn pipeline(model: &str, extra: &str, batch_size: usize) -> String {
    let dir = fixtures();
    format!(
        r#"[pipeline]
name = "onnx"
batch_size = 4

[[stage]]
id = "rows"
uses = "collect.table"
path = "{dir}/inputs.arrow"
id_column = "id"

[[stage]]
id = "model"
uses = "model.onnx"
model = "{dir}/{model}"
batch_size = {batch_size}
threads = 1
{extra}

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#,
        dir = dir.display()
    )
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn run(dir: &Path, text_of_pipeline: &str) -> arrow::record_batch::RecordBatch {
    write(dir, "p.toml", text_of_pipeline);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_parquet(&dir.join("out/out.parquet"))
}

fn rows(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<Vec<f32>> {
    let c = batch.column_by_name(column).unwrap();
    if let Some(list) = c.as_any().downcast_ref::<FixedSizeListArray>() {
        let values = list.values().as_any().downcast_ref::<Float32Array>().unwrap();
        let w = list.value_length() as usize;
        return values.values().chunks(w).map(<[f32]>::to_vec).collect();
    }
    c.as_any().downcast_ref::<Float32Array>().unwrap().values().iter().map(|v| vec![*v]).collect()
}

fn max_abs_diff(got: &[Vec<f32>], want: &serde_json::Value) -> f64 {
    let want: Vec<Vec<f64>> = match want.as_array().unwrap()[0].is_array() {
        true => serde_json::from_value(want.clone()).unwrap(),
        false => serde_json::from_value::<Vec<f64>>(want.clone()).unwrap().into_iter().map(|v| vec![v]).collect(),
    };
    assert_eq!(got.len(), want.len());
    got.iter().zip(&want).flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs())).fold(0.0, f64::max)
}

#[test]
fn outputs_equal_python_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &pipeline("mlp.onnx", "", 7));
    let reference = reference();
    for column in ["logits", "probs"] {
        let diff = max_abs_diff(&rows(&out, column), &reference[column]);
        assert!(diff <= 1e-5, "{column}: max abs difference {diff}");
    }
    let ids = out.column(0).as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    assert_eq!(ids.value(9), "r9");
}

#[test]
fn batch_size_does_not_change_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let results: Vec<Vec<Vec<f32>>> =
        [1, 7, 64].iter().map(|b| rows(&run(dir.path(), &pipeline("mlp.onnx", "", *b)), "probs")).collect();
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn fixed_batch_models_are_padded_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &pipeline("mlp_fixed4.onnx", "outputs = { probs = \"p\" }", 64));
    assert_eq!(out.num_rows(), 10);
    let diff = max_abs_diff(&rows(&out, "p"), &reference()["probs"]);
    assert!(diff <= 1e-5, "max abs difference {diff}");
    assert!(out.column_by_name("logits").is_none(), "only the mapped output is written");
}

#[test]
fn integer_inputs_are_fed_as_their_element_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &pipeline("half.onnx", "", 3));
    let diff = max_abs_diff(&rows(&out, "half"), &reference()["half"]);
    assert!(diff == 0.0, "max abs difference {diff}");
}

#[test]
fn signature_mismatches_fail_validation() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("mlp.onnx", "inputs = { nope = \"x\" }", "p.toml:17:10", "the model has no input `nope`"),
        (
            "mlp.onnx",
            "inputs = { x = \"wide\" }",
            "p.toml:17:10",
            "has shape [?, 1, 4, 4] (float32), but column `wide` gives [batch, 1, 2, 8]",
        ),
        ("mlp.onnx", "inputs = { x = \"label\" }", "p.toml:17:10", "column `label` gives [batch]"),
        ("fp16.onnx", "", "p.toml:14:9", "element type float16"),
        ("missing.onnx", "", "p.toml:14:9", "does not exist"),
        ("mlp.onnx", "outputs = { prob = \"p\" }", "p.toml:17:11", "the model has no output `prob`"),
    ];
    for (model, extra, location, needle) in cases {
        write(dir.path(), "p.toml", pipeline(model, extra, 4));
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{model} {extra}: {t}");
        assert!(t.contains(location) && t.contains(needle), "{model} {extra}: expected {location} and {needle:?}\n{t}");
        assert!(t.contains("stage \"model\""), "{t}");
    }
}

#[test]
fn an_unavailable_execution_provider_is_a_visible_warning() {
    // The setup library is the CPU wheel's: it has neither CUDA nor TensorRT.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", pipeline("mlp.onnx", "providers = [\"cuda\", \"cpu\"]", 4));
    for verb in ["validate", "run"] {
        let out = pipe_output(&[verb, "p.toml"], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{t}");
        assert!(t.contains("warning: stage \"model\": execution provider CUDAExecutionProvider"), "{verb}: {t}");
        assert!(t.contains("falling back"), "{t}");
        assert_eq!(t.matches("CUDAExecutionProvider is not in this ONNX Runtime library").count(), 1, "once: {t}");
    }
    // And the run went on on the CPU, with the CPU's results.
    let diff = max_abs_diff(&rows(&read_parquet(&dir.path().join("out/out.parquet")), "probs"), &reference()["probs"]);
    assert!(diff <= 1e-5, "max abs difference {diff}");

    // Each provider asked for and missing is named once, in the order asked.
    write(dir.path(), "p.toml", pipeline("mlp.onnx", "providers = [\"tensorrt\", \"cuda\"]", 4));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let (trt, cuda) = (t.find("TensorrtExecutionProvider is not"), t.find("CUDAExecutionProvider is not"));
    assert!(trt.is_some() && cuda.is_some() && trt < cuda, "{t}");
    assert_eq!(t.matches("warning: ").count(), 2, "{t}");
}

#[test]
fn doctor_lists_the_providers_this_build_can_register() {
    let out = common::pipe().arg("doctor").output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "run scripts/setup first: {t}");
    // The CPU wheel of scripts/setup: pipe can register CUDA and TensorRT, the library has neither.
    let line = t.lines().find(|l| l.starts_with("providers: ")).unwrap_or_else(|| panic!("no providers line: {t}"));
    assert_eq!(line, "providers: cpu (available), cuda (not in this library), tensorrt (not in this library)");
    assert!(t.contains("execution providers: ") && t.contains("CPUExecutionProvider"), "{t}");
}
