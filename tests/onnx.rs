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
    // A folder per run, so no run is answered from another's per-row cache.
    let results: Vec<Vec<Vec<f32>>> = [1, 7, 64]
        .iter()
        .map(|b| rows(&run(tempfile::tempdir().unwrap().path(), &pipeline("mlp.onnx", "", *b)), "probs"))
        .collect();
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

/// A run the model fails for one bad row is run again row by row under on_error = "skip": only
/// that row is rejected, with ONNX Runtime's reason; an empty input is that row's error too. Under
/// "fail" the error names the rows of the failed run and the model file.
#[test]
fn a_row_the_model_cannot_take_is_rejected_alone_under_skip() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures();
    write(
        dir.path(),
        "labels.jsonl",
        "{\"id\":\"a\",\"label\":1}\n{\"id\":\"b\",\"label\":12}\n{\"id\":\"c\",\"label\":3}\n\
         {\"id\":\"d\",\"label\":null}\n{\"id\":\"e\",\"label\":9}\n",
    );
    let text_of = |on_error: &str| {
        format!(
            "[pipeline]\nname = \"embed\"\nbatch_size = 8\non_error = \"{on_error}\"\n\n\
             [[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"labels.jsonl\"\nid_column = \"id\"\n\n\
             [[stage]]\nid = \"embed\"\nuses = \"model.onnx\"\nmodel = \"{}/embed.onnx\"\nthreads = 1\n\
             inputs = {{ label = \"label\" }}\n\n\
             [[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"out.parquet\"\n",
            fixtures.display()
        )
    };
    write(dir.path(), "skip.toml", text_of("skip"));
    let out = pipe_output(&["run", "skip.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let batch = read_parquet(&dir.path().join("out/out.parquet"));
    let ids = batch.column_by_name("id").unwrap().as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
    assert_eq!(ids.iter().map(|i| i.unwrap()).collect::<Vec<_>>(), ["a", "c", "e"]);
    let vec = batch.column_by_name("vec").unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let values = vec.values().as_any().downcast_ref::<Float32Array>().unwrap();
    assert_eq!(values.values().to_vec(), [2.0, 3.0, 6.0, 7.0, 18.0, 19.0]);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{rejects}");
    let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("{id} in {rejects}"));
    assert_eq!(by_id("d")["reason"], "`label` is empty");
    let reason = by_id("b")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("embed.onnx") && reason.contains("out of data bounds"), "{reason}");

    write(dir.path(), "fail.toml", text_of("fail").replace("{\"id\":\"d\",\"label\":null}\n", ""));
    std::fs::write(
        dir.path().join("labels.jsonl"),
        "{\"id\":\"a\",\"label\":1}\n{\"id\":\"b\",\"label\":12}\n{\"id\":\"c\",\"label\":3}\n",
    )
    .unwrap();
    let out = pipe_output(&["run", "fail.toml", "--quiet"], dir.path());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("stage `embed`: 3 rows `a` ... `c`: "), "{all}");
    assert!(all.contains("embed.onnx: ") && all.contains("out of data bounds"), "{all}");
}
