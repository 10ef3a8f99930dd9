//! Text-to-image in composable stages on a model folder in optimum's Stable Diffusion layout
//! (tests/fixtures/sd, built by make_fixture.py with hand-computable networks): tokenize ->
//! text encoder -> model.diffuse with guidance on the empty prompt -> scale -> VAE decoder matches
//! the fixture's numpy re-derivation within 1e-4 at batch sizes 1 and 3, and `pipe validate`
//! type-checks every edge of the example pipeline without reading data.

mod common;

use arrow::array::{Array, FixedSizeListArray, Int32Array, ListArray, StringArray};
use common::{pipe_output, read_parquet, repo, tensor_rows, text, write};

fn fixture() -> std::path::PathBuf {
    repo().join("tests/fixtures/sd")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap()
}

/// The example pipeline, reading the fixture's prompts and latents (so the numpy reference can
/// start from the same noise) and writing the images' values and the token ids to a table.
fn pipeline_text() -> String {
    let example = std::fs::read_to_string(repo().join("examples/text-to-image/pipeline.toml")).unwrap();
    let folder = fixture().join("model").display().to_string();
    let example = example
        .replace("${SD_MODEL:-../../tests/fixtures/sd/model}", &folder)
        .replace("path = \"prompts.csv\"", &format!("path = \"{}/inputs.arrow\"", fixture().display()))
        .replace(
            "query = \"SELECT id, prompt, '' AS negative FROM batch\"",
            "query = \"SELECT id, prompt, latents, '' AS negative FROM batch\"",
        )
        .replace("steps = 20\n", "steps = 5\nlatents = \"latents_in\"\n");
    assert!(example.contains("latents_in") && example.contains("inputs.arrow"), "the example changed shape");
    // The fixture's latents column is `latents`, which the denoise stage writes: read it renamed.
    let example = example.replace("SELECT id, prompt, latents,", "SELECT id, prompt, latents AS latents_in,");
    format!(
        "{example}\n[[stage]]\nid = \"table\"\nuses = \"sink.table\"\ninput = \"decode\"\npath = \"images.parquet\"\n\
         columns = [\"id\", \"input_ids\", \"image\"]\n"
    )
}

fn int_rows(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<Vec<i32>> {
    let c = batch.column_by_name(column).unwrap();
    let (values, offsets): (Int32Array, Vec<usize>) = if let Some(l) = c.as_any().downcast_ref::<ListArray>() {
        (
            l.values().as_any().downcast_ref::<Int32Array>().unwrap().clone(),
            l.offsets().iter().map(|o| *o as usize).collect(),
        )
    } else {
        let l = c.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let w = l.value_length() as usize;
        (l.values().as_any().downcast_ref::<Int32Array>().unwrap().clone(), (0..=l.len()).map(|i| i * w).collect())
    };
    offsets.windows(2).map(|w| values.values()[w[0]..w[1]].to_vec()).collect()
}

#[test]
fn the_whole_pipeline_matches_the_numpy_reference_at_batch_sizes_1_and_3() {
    let reference = reference();
    let rows = reference["rows"].as_object().unwrap();
    for batch_size in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.toml", pipeline_text());
        let set = format!("pipeline.batch_size={batch_size}");
        let out = pipe_output(&["run", "p.toml", "--quiet", "--set", &set], dir.path());
        assert_eq!(out.status.code(), Some(0), "batch size {batch_size}: {}", text(&out));
        let batch = read_parquet(&dir.path().join("out/images.parquet"));
        let ids = batch.column_by_name("id").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!(ids.len(), rows.len(), "batch size {batch_size}");
        let (images, tokens) = (tensor_rows(&batch, "image"), int_rows(&batch, "input_ids"));
        for r in 0..ids.len() {
            let want = &rows[ids.value(r)];
            let want_ids: Vec<i32> =
                want["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
            assert_eq!(tokens[r], want_ids, "row {}: token ids", ids.value(r));
            let want_image = want["image"].as_array().unwrap();
            assert_eq!(images[r].len(), want_image.len(), "row {}: image size", ids.value(r));
            for (k, (g, w)) in images[r].iter().zip(want_image).enumerate() {
                let w = w.as_f64().unwrap();
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-4,
                    "batch size {batch_size}, row {}, value {k}: {g} != {w}",
                    ids.value(r)
                );
            }
        }
        // The PNGs are there too, one per prompt.
        let pngs = std::fs::read_dir(dir.path().join("out/images")).unwrap().count();
        assert_eq!(pngs, rows.len());
    }
}

#[test]
fn validate_type_checks_every_edge_without_data() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", pipeline_text());
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The pooled embedding [16] is not the UNet's encoder_hidden_states [?, ?, 16].
    let wrong =
        pipeline_text().replace("outputs = { last_hidden_state = \"text\" }", "outputs = { pooler_output = \"text\" }");
    write(dir.path(), "wrong.toml", &wrong);
    let out = pipe_output(&["validate", "wrong.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("encoder_hidden_states"), "{}", text(&out));
    // The UNet's sample is [batch, 4, height, width]: three channels are refused at sample_shape.
    let wrong = pipeline_text().replace("sample_shape = [4, 8, 8]", "sample_shape = [3, 8, 8]");
    write(dir.path(), "channels.toml", &wrong);
    let out = pipe_output(&["validate", "channels.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("sample_shape"), "{}", text(&out));
}

/// Copies the folder `from` into `to`, files one level of folders deep (the layout's depth).
fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_folder(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_folder_with_a_pndm_lms_or_unipc_config_runs_that_scheduler() {
    // Stable Diffusion v1's scheduler_config.json: PNDMScheduler with skip_prk_steps.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("sd");
    copy_folder(&fixture().join("model"), &folder);
    let config = serde_json::json!({
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false
    });
    write(&folder, "scheduler/scheduler_config.json", config.to_string());
    let text_of =
        pipeline_text().replace(&fixture().join("model").display().to_string(), &folder.display().to_string());
    write(dir.path(), "p.toml", &text_of);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = common::run_json(&dir.path().join("out"));
    let denoise = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "denoise").unwrap();
    assert_eq!(denoise["scheduler"], "pndm");
    // PLMS calls the model steps + 1 times (the second timestep twice), each on the doubled batch
    // of the four prompts.
    assert_eq!(denoise["model_runs"], 6, "{denoise}");
    assert_eq!(denoise["model_rows"], 6 * 2 * 4, "{denoise}");
    // An LMSDiscreteScheduler config selects lms: one model call per step.
    let lms = serde_json::json!({
        "_class_name": "LMSDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "steps_offset": 1, "trained_betas": null
    });
    write(&folder, "scheduler/scheduler_config.json", lms.to_string());
    let out = pipe_output(&["run", "p.toml", "--quiet", "--output-dir", "out-lms"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = common::run_json(&dir.path().join("out-lms"));
    let denoise = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "denoise").unwrap();
    assert_eq!((&denoise["scheduler"], &denoise["model_runs"]), (&serde_json::json!("lms"), &serde_json::json!(5)));
    // SD's UniPC config selects unipc; a solver order pipe does not implement is refused, naming it.
    let unipc = serde_json::json!({
        "_class_name": "UniPCMultistepScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "solver_order": 2, "solver_type": "bh2",
        "predict_x0": true, "lower_order_final": true, "disable_corrector": []
    });
    write(&folder, "scheduler/scheduler_config.json", unipc.to_string());
    let out = pipe_output(&["run", "p.toml", "--quiet", "--output-dir", "out-unipc"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = common::run_json(&dir.path().join("out-unipc"));
    let denoise = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "denoise").unwrap();
    assert_eq!(denoise["scheduler"], "unipc");
    write(
        &folder,
        "scheduler/scheduler_config.json",
        unipc.to_string().replace("\"solver_order\":2", "\"solver_order\":3"),
    );
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("solver_order = 3"), "{}", text(&out));
    // PRK steps are not implemented: a config asking for them is refused, naming the field.
    write(
        &folder,
        "scheduler/scheduler_config.json",
        config.to_string().replace("\"skip_prk_steps\":true", "\"skip_prk_steps\":false"),
    );
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("skip_prk_steps"), "{}", text(&out));
}
