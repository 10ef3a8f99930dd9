//! model.diffuse end to end: every scheduler case of tests/fixtures/diffusion/reference.json (a
//! numpy re-derivation of diffusers' equations, fed the same latents and step noise) matches at
//! every step; guidance runs the model once per step on the doubled batch; without given noise,
//! samples are reproducible with a seed and do not depend on the batch size. The scheduler's own
//! unit tests (stages/diffuse/src/scheduler.rs) check the equations alone within 1e-5 relative;
//! here ONNX Runtime evaluates the model in float32, so the bound is 1e-3 relative (1e-4 absolute).

mod common;

use arrow::array::{Array, StringArray};
use common::{pipe_output, read_parquet, repo, run_json, tensor_rows as rows, text, write};

fn fixtures() -> std::path::PathBuf {
    repo().join("tests/fixtures/diffusion")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn ids(batch: &arrow::record_batch::RecordBatch) -> Vec<String> {
    let a = batch.column_by_name("id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|r| a.value(r).to_string()).collect()
}

fn close(got: f32, want: f64) -> bool {
    let (g, w) = (f64::from(got), want);
    (g - w).abs() <= 1e-4_f64.max(1e-3 * w.abs())
}

#[test]
fn every_scheduler_case_matches_the_reference_at_every_step() {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    // One run: the table fans out to one model.diffuse stage and one sink per case.
    let mut text_of_pipeline = format!(
        "[pipeline]\nname = \"schedulers\"\nbatch_size = 4\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{}/inputs.arrow\"\nid_column = \"id\"\n",
        fixtures().display()
    );
    for (i, case) in cases.iter().enumerate() {
        let c = &case["config"];
        text_of_pipeline.push_str(&format!(
            r#"
[[stage]]
id = "case{i}"
uses = "model.diffuse"
input = "rows"
model = "{dir}/eps.onnx"
threads = 1
sample_shape = [1, 4, 4]
latents = "latents"
noise = "noise"
condition = "label"
uncond = {uncond}
guidance_scale = {guidance}
trace = true
steps = {steps}
scheduler = {scheduler}
num_train_timesteps = {ntt}
beta_start = {bs}
beta_end = {be}
beta_schedule = {sched}
prediction_type = {pred}
timestep_spacing = {spacing}
steps_offset = {offset}
eta = {eta}
clip_sample = {clip}
clip_sample_range = {range}
set_alpha_to_one = {one}

[[stage]]
id = "save{i}"
uses = "sink.table"
input = "case{i}"
path = "case{i}.parquet"
columns = ["id", "sample", "trace"]
"#,
            dir = fixtures().display(),
            uncond = case["uncond"],
            guidance = case["guidance_scale"].as_f64().unwrap(),
            steps = case["steps"],
            scheduler = c["scheduler"],
            ntt = c["num_train_timesteps"],
            bs = c["beta_start"].as_f64().unwrap(),
            be = c["beta_end"].as_f64().unwrap(),
            sched = c["beta_schedule"],
            pred = c["prediction_type"],
            spacing = c["timestep_spacing"],
            offset = c["steps_offset"],
            eta = c["eta"].as_f64().unwrap(),
            clip = c["clip_sample"],
            range = c["clip_sample_range"].as_f64().unwrap(),
            one = c["set_alpha_to_one"],
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", &text_of_pipeline);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = run_json(&dir.path().join("out"));
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let batch = read_parquet(&dir.path().join(format!("out/case{i}.parquet")));
        let (samples, traces) = (rows(&batch, "sample"), rows(&batch, "trace"));
        let steps = case["steps"].as_u64().unwrap() as usize;
        for (r, id) in ids(&batch).iter().enumerate() {
            let want = &case["rows"][id];
            for (step, expected) in want["steps"].as_array().unwrap().iter().enumerate() {
                let got = &traces[r][step * 16..(step + 1) * 16];
                for (k, (g, w)) in got.iter().zip(expected.as_array().unwrap()).enumerate() {
                    assert!(close(*g, w.as_f64().unwrap()), "{name}, row {id}, step {step}, value {k}: {g} != {w}");
                }
            }
            for (g, w) in samples[r].iter().zip(want["final"].as_array().unwrap()) {
                assert!(close(*g, w.as_f64().unwrap()), "{name}, row {id}, final: {g} != {w}");
            }
        }
        // Guidance doubles the rows of each model run; without it, one run of 4 rows per step.
        let stage = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == format!("case{i}")).unwrap();
        let per_run = if case["guidance_scale"].as_f64().unwrap() == 1.0 { 4 } else { 8 };
        assert_eq!(stage["model_runs"].as_u64().unwrap() as usize, steps, "{name}");
        assert_eq!(stage["model_rows"].as_u64().unwrap() as usize, steps * per_run, "{name}");
    }
}

/// A pipeline drawing its own noise (no latents, no noise column).
fn seeded(scheduler: &str, batch_size: usize, seed: u64) -> String {
    format!(
        r#"[pipeline]
name = "seeded"
seed = {seed}

[[stage]]
id = "rows"
uses = "collect.table"
path = "{dir}/inputs.arrow"
id_column = "id"

[[stage]]
id = "denoise"
uses = "model.diffuse"
model = "{dir}/eps.onnx"
threads = 1
sample_shape = [1, 4, 4]
scheduler = "{scheduler}"
steps = 8
condition = "label"
count = 3
batch_size = {batch_size}

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
columns = ["id", "label", "sample"]
"#,
        dir = fixtures().display()
    )
}

#[test]
fn stochastic_schedulers_are_reproducible_and_independent_of_the_batch() {
    for scheduler in ["ddpm", "euler-a"] {
        let mut results = Vec::new();
        for (batch_size, seed) in [(12, 1), (1, 1), (5, 1), (12, 2)] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "p.toml", seeded(scheduler, batch_size, seed));
            let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            let batch = read_parquet(&dir.path().join("out/out.parquet"));
            assert_eq!(ids(&batch)[..4], ["0-0", "0-1", "0-2", "1-0"]);
            results.push(rows(&batch, "sample"));
        }
        assert_eq!(results[0].len(), 12);
        assert_eq!(results[0], results[1], "{scheduler}: batch size 12 vs 1");
        assert_eq!(results[0], results[2], "{scheduler}: batch size 12 vs 5");
        assert_ne!(results[0], results[3], "{scheduler}: another seed gives other samples");
        assert_ne!(results[0][0], results[0][1], "{scheduler}: each sample draws its own noise");
    }
}

#[test]
fn bad_diffuse_configs_fail_at_validate_time() {
    let dir = tempfile::tempdir().unwrap();
    let base = seeded("ddim", 4, 0);
    for (from, to, expected) in [
        ("scheduler = \"ddim\"", "scheduler = \"dpm\"", "expected one of"),
        ("steps = 8", "steps = 0", "at least 1"),
        ("steps = 8", "steps = 8\nguidance_scale = 2.0", "uncond"),
        ("sample_shape = [1, 4, 4]", "sample_shape = [1, 8, 8]", "sample_shape"),
        ("condition = \"label\"", "condition = \"id\"", "Utf8"),
        ("steps = 8", "steps = 8\neta = 2.0", "eta"),
    ] {
        write(dir.path(), "p.toml", base.replace(from, to));
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{to}: {}", text(&out));
        assert!(text(&out).contains(expected), "{to}: {}", text(&out));
    }
}

#[test]
fn a_diffusers_scheduler_config_fills_the_scheduler_keys() {
    // The reference case "euler-scaled_linear", given as a diffusers scheduler_config.json
    // (class name, betas, spacing) instead of keys in the pipeline file.
    let reference = reference();
    let case = reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == "euler-scaled_linear").unwrap();
    let c = &case["config"];
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": c["num_train_timesteps"],
        "beta_start": c["beta_start"],
        "beta_end": c["beta_end"],
        "beta_schedule": c["beta_schedule"],
        "prediction_type": c["prediction_type"],
        "timestep_spacing": c["timestep_spacing"],
        "steps_offset": c["steps_offset"],
        "trained_betas": null,
        "interpolation_type": "linear"
    });
    write(dir.path(), "scheduler_config.json", config.to_string());
    let pipeline = format!(
        r#"[pipeline]
name = "config"

[[stage]]
id = "rows"
uses = "collect.table"
path = "{dir}/inputs.arrow"
id_column = "id"

[[stage]]
id = "denoise"
uses = "model.diffuse"
model = "{dir}/eps.onnx"
threads = 1
sample_shape = [1, 4, 4]
scheduler_config = "scheduler_config.json"
steps = {steps}
latents = "latents"
noise = "noise"
condition = "label"

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#,
        dir = fixtures().display(),
        steps = case["steps"]
    );
    write(dir.path(), "p.toml", pipeline);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = run_json(&dir.path().join("out"));
    assert_eq!(report["stages"][1]["scheduler"], "euler");
    let batch = read_parquet(&dir.path().join("out/out.parquet"));
    for (r, id) in ids(&batch).iter().enumerate() {
        for (g, w) in rows(&batch, "sample")[r].iter().zip(case["rows"][id]["final"].as_array().unwrap()) {
            assert!(close(*g, w.as_f64().unwrap()), "row {id}: {g} != {w}");
        }
    }
}

#[test]
fn a_scheduler_class_pipe_does_not_implement_is_an_error_not_ddim() {
    // Once ran silently as DDIM, and run.json said "ddim".
    let dir = tempfile::tempdir().unwrap();
    for class in ["KDPM2DiscreteScheduler", "DEISMultistepScheduler"] {
        let config = serde_json::json!({ "_class_name": class, "num_train_timesteps": 1000 });
        write(dir.path(), "scheduler_config.json", config.to_string());
        let pipeline = format!(
            "[pipeline]\nname = \"c\"\n\n[[stage]]\nid = \"z\"\nuses = \"collect.latent\"\ncount = 2\nshape = [1, 4, 4]\n\
             labels = [1]\n\n[[stage]]\nid = \"denoise\"\nuses = \"model.diffuse\"\nmodel = \"{dir}/eps.onnx\"\n\
             sample_shape = [1, 4, 4]\nscheduler_config = \"scheduler_config.json\"\nsteps = 4\nlatents = \"z\"\n\
             condition = \"label\"\n",
            dir = fixtures().display()
        );
        write(dir.path(), "p.toml", pipeline);
        for verb in ["validate", "run"] {
            let out = pipe_output(&[verb, "p.toml"], dir.path());
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{class} {verb}: {t}");
            assert!(t.contains(&format!("names {class}, which pipe does not implement")), "{t}");
            assert!(t.contains("p.toml:16:20") && t.contains("DDIMScheduler (\"ddim\")"), "{t}");
        }
    }
}

/// The seeded ddim pipeline over `labels.jsonl`, one sample per row, with `on_error`.
fn labelled(on_error: &str) -> String {
    seeded("ddim", 4, 0)
        .replace("seed = 0\n", &format!("seed = 0\non_error = \"{on_error}\"\n"))
        .replace(&format!("{}/inputs.arrow", fixtures().display()), "labels.jsonl")
        .replace("count = 3\n", "")
}

#[test]
fn a_null_condition_rejects_its_row_through_on_error() {
    // Once failed the run even with on_error = "skip".
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "labels.jsonl",
        "{\"id\": \"a\", \"label\": 1}\n{\"id\": \"b\", \"label\": null}\n{\"id\": \"c\", \"label\": 3}\n",
    );
    write(dir.path(), "p.toml", labelled("skip"));
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(rejects.contains("\"id\":\"b\"") && rejects.contains("`label` is empty"), "{rejects}");
    let batch = read_parquet(&dir.path().join("out/out.parquet"));
    assert_eq!(ids(&batch), ["a", "c"]);
    let report = run_json(&dir.path().join("out"));
    assert_eq!(report["rejected"], 1, "{report}");

    // The other rows are what they are without the rejected one.
    let alone = tempfile::tempdir().unwrap();
    write(alone.path(), "labels.jsonl", "{\"id\": \"a\", \"label\": 1}\n{\"id\": \"c\", \"label\": 3}\n");
    write(alone.path(), "p.toml", labelled("skip"));
    let out = pipe_output(&["run", "p.toml", "--quiet"], alone.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(rows(&read_parquet(&alone.path().join("out/out.parquet")), "sample"), rows(&batch, "sample"));

    // on_error = "fail" stops the run at that row.
    write(dir.path(), "p.toml", labelled("fail"));
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("row `b`") && t.contains("`label` is empty"), "{t}");
}

/// The digits model looks a class up in a table of 11 (10 digits and "none"): a label of 99 makes
/// ONNX Runtime fail the whole chunk. Under on_error = "skip" the chunk is denoised again a row at
/// a time, only that row is rejected (with ONNX Runtime's reason), and the other rows' samples are
/// the ones a run without it gives; under "fail" the error names the chunk's rows and the model.
#[test]
fn a_row_the_model_fails_on_is_rejected_alone_under_skip() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("examples/models/digits-diffusion/model.onnx");
    let labels = |rows: &[(&str, i64)]| {
        rows.iter().map(|(id, l)| format!("{{\"id\":\"{id}\",\"label\":{l}}}\n")).collect::<String>()
    };
    let pipeline = |on_error: &str, table: &str, out: &str| {
        format!(
            "[pipeline]\nname = \"bad-class\"\nbatch_size = 8\non_error = \"{on_error}\"\noutput_dir = \"{out}\"\n\n\
             [[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"{table}\"\nid_column = \"id\"\n\n\
             [[stage]]\nid = \"gen\"\nuses = \"model.diffuse\"\nmodel = \"{}\"\nsample_shape = [1, 16, 16]\n\
             scheduler = \"ddim\"\nsteps = 4\ncondition = \"label\"\nthreads = 1\n\n\
             [[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"out.parquet\"\n",
            model.display()
        )
    };
    write(dir.path(), "bad.jsonl", labels(&[("a", 1), ("b", 99), ("c", 3)]));
    write(dir.path(), "good.jsonl", labels(&[("a", 1), ("c", 3)]));
    write(dir.path(), "skip.toml", pipeline("skip", "bad.jsonl", "out"));
    write(dir.path(), "good.toml", pipeline("skip", "good.jsonl", "good"));
    for file in ["skip.toml", "good.toml"] {
        let out = pipe_output(&["run", file, "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out));
    }
    let got = read_parquet(&dir.path().join("out/out.parquet"));
    let want = read_parquet(&dir.path().join("good/out.parquet"));
    assert_eq!(ids(&got), ["a", "c"]);
    assert_eq!(rows(&got, "sample"), rows(&want, "sample"));
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(rejects.contains("\"id\":\"b\"") && rejects.contains("model.onnx"), "{rejects}");

    write(dir.path(), "fail.toml", pipeline("fail", "bad.jsonl", "failed"));
    let out = pipe_output(&["run", "fail.toml", "--quiet"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("stage `gen`: 3 rows `a` ... `c`: ") && t.contains("model.onnx: "), "{t}");
}
