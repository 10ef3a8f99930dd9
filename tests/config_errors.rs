//! Every class of bad configuration exits 2 with a diagnostic that names file:line:col and a hint,
//! and never panics.

mod common;

use common::{pipe_output, text, write};

const GOOD: &str = r#"[pipeline]
name = "t"

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
load = "text"

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#;

/// GOOD with a model.diffuse stage whose keys after `sample_shape` are `keys`, from line 21.
fn diffuse(keys: &str) -> String {
    format!(
        "{GOOD}\n[[stage]]\nid = \"d\"\nuses = \"model.diffuse\"\ninput = \"files\"\nmodel = \"m.onnx\"\n\
         sample_shape = [1, 4, 4]\n{keys}\n"
    )
}

/// (what, pipeline text, extra args, expected "file:line:col", text the message must contain)
fn cases() -> Vec<(&'static str, String, Vec<&'static str>, &'static str, &'static str)> {
    vec![
        (
            "a diffusion eta outside [0, 1], at eta (once at steps)",
            diffuse("steps = 4\neta = 2.0"),
            vec![],
            "p.toml:22:7",
            "eta must be within [0, 1], got 2",
        ),
        (
            "a beta_end that gives betas past 1, at beta_end (once at steps)",
            diffuse("beta_end = 1.5"),
            vec![],
            "p.toml:21:12",
            "must give betas within (0, 1)",
        ),
        (
            "a clip_sample_range that is not positive, at clip_sample_range (once at steps)",
            diffuse("clip_sample = true\nclip_sample_range = -1.0"),
            vec![],
            "p.toml:22:21",
            "clip_sample_range must be positive, got -1",
        ),
        (
            "more diffusion steps than training timesteps, at steps",
            diffuse("steps = 2000"),
            vec![],
            "p.toml:21:9",
            "steps (2000) cannot be larger than num_train_timesteps (1000)",
        ),
        (
            "an unknown beta_schedule, at beta_schedule",
            diffuse("beta_schedule = \"cosine\""),
            vec![],
            "p.toml:21:17",
            "unknown beta_schedule \"cosine\"",
        ),
        ("toml syntax", GOOD.replace("name = \"t\"", "name = \"t"), vec![], "p.toml:2:10", "invalid"),
        (
            "unknown top-level key",
            format!("{GOOD}\n[pipline]\nx = 1\n"),
            vec![],
            "p.toml:15:2",
            "did you mean `pipeline`?",
        ),
        (
            "unknown stage key",
            GOOD.replace("load = \"text\"", "lod = \"text\""),
            vec![],
            "p.toml:8:1",
            "did you mean `load`?",
        ),
        ("missing id", GOOD.replace("id = \"save\"\n", ""), vec![], "p.toml:10:1", "missing `id`"),
        ("missing uses", GOOD.replace("uses = \"sink.table\"\n", ""), vec![], "p.toml:10:1", "missing `uses`"),
        ("duplicate id", GOOD.replace("id = \"save\"", "id = \"files\""), vec![], "p.toml:11:6", "duplicate stage id"),
        (
            "unknown plugin",
            GOOD.replace("sink.table", "sink.tabel"),
            vec![],
            "p.toml:12:8",
            "did you mean \"sink.table\"?",
        ),
        (
            "unknown input",
            GOOD.replace("id = \"save\"", "id = \"save\"\ninput = \"fils\""),
            vec![],
            "p.toml:12:9",
            "did you mean \"files\"?",
        ),
        (
            "cycle",
            format!(
                "{GOOD}\n[[stage]]\nid = \"a\"\nuses = \"preprocess.sql\"\nquery = \"SELECT id FROM batch\"\ninput = \"b\"\n\n\
                 [[stage]]\nid = \"b\"\nuses = \"preprocess.sql\"\nquery = \"SELECT id FROM batch\"\ninput = \"a\"\n"
            ),
            vec![],
            "p.toml:19:9",
            "cycle",
        ),
        ("wrong value type", GOOD.replace("path = \"data\"", "path = 5"), vec![], "p.toml:7:8", "expected a string"),
        (
            "wrong type in [pipeline]",
            GOOD.replace("name = \"t\"", "name = \"t\"\nbatch_size = \"big\""),
            vec![],
            "p.toml:3:14",
            "invalid type",
        ),
        (
            "bad enum value",
            GOOD.replace("load = \"text\"", "load = \"txt\""),
            vec![],
            "p.toml:8:8",
            "allowed values: \"bytes\", \"text\", \"none\"",
        ),
        (
            "unset variable",
            GOOD.replace("path = \"data\"", "path = \"${PIPE_TEST_UNSET_VAR}\""),
            vec![],
            "p.toml:7:8",
            "PIPE_TEST_UNSET_VAR",
        ),
        ("--set unknown stage", GOOD.to_string(), vec!["--set", "fils.path=x"], "--set:1:1", "did you mean \"files\"?"),
        (
            "--set bad type",
            GOOD.to_string(),
            vec!["--set", "files.recursive=\"yes\""],
            "--set:1:17",
            "expected a boolean",
        ),
        (
            "unknown column",
            GOOD.replace("path = \"out.parquet\"", "path = \"out.parquet\"\ncolumns = [\"txt\"]"),
            vec![],
            "p.toml:14:11",
            "did you mean `text`?",
        ),
        (
            "bad sql",
            format!(
                "{GOOD}\n[[stage]]\nid = \"q\"\nuses = \"preprocess.sql\"\nquery = \"SELECT id, nope FROM batch\"\n"
            ),
            vec![],
            "p.toml:18:9",
            "nope",
        ),
        (
            "csv with bytes",
            GOOD.replace("load = \"text\"", "").replace("out.parquet", "out.csv"),
            vec![],
            "p.toml:13:8",
            "CSV cannot hold",
        ),
        (
            "output outside folder",
            GOOD.replace("out.parquet", "../x.parquet"),
            vec![],
            "p.toml:13:8",
            "leaves the output folder",
        ),
        (
            "batch_size past the limit (once a 137 GB allocation)",
            GOOD.replace("name = \"t\"", "name = \"t\"\nbatch_size = 4294967296"),
            vec![],
            "p.toml:3:14",
            "more than the limit, 1048576",
        ),
        (
            "batch_size at i64::MAX (once an overflow in the CSV reader)",
            GOOD.replace("name = \"t\"", "name = \"t\"\nbatch_size = 9223372036854775807"),
            vec![],
            "p.toml:3:14",
            "more than the limit, 1048576",
        ),
        (
            "a tensor shape whose product overflows",
            format!(
                "{GOOD}\n[[stage]]\nid = \"z\"\nuses = \"collect.latent\"\ncount = 2\nshape = [4294967296, 4294967296]\n"
            ),
            vec![],
            "p.toml:19:9",
            "more than 268435456 values per row",
        ),
        (
            "a retried span stage that is not row-wise",
            format!(
                "{GOOD}\n[[stage]]\nid = \"keep\"\nuses = \"refine.filter\"\ninput = \"files\"\nwhere = \"true\"\n\n\
                 [[stage]]\nid = \"again\"\nuses = \"refine.iterate\"\nstages = [\"keep\"]\nuntil = \"true\"\nkeep = \"last\"\n"
            ),
            vec![],
            "p.toml:24:10",
            "stage \"keep\" (refine.filter) is not row-wise",
        ),
        (
            "a number that is not finite",
            format!("{GOOD}\n[[stage]]\nid = \"z\"\nuses = \"collect.latent\"\ncount = 2\nshape = [2]\nlow = -inf\n"),
            vec![],
            "p.toml:20:7",
            "-inf is not a finite number",
        ),
        (
            "a number that is not finite, by --set",
            GOOD.to_string(),
            vec!["--set", "files.x=nan"],
            "--set:1:9",
            "not a finite number",
        ),
        (
            "an output folder that is a file",
            GOOD.replace("name = \"t\"", "name = \"t\"\noutput_dir = \"p.toml\""),
            vec![],
            "p.toml:3:14",
            "output folder ./p.toml is a file, not a folder",
        ),
        (
            "a folder given as a model",
            format!("{GOOD}\n[[stage]]\nid = \"m\"\nuses = \"model.onnx\"\ninput = \"files\"\nmodel = \"data\"\n"),
            vec![],
            "p.toml:19:9",
            "is a folder, not an .onnx file",
        ),
        (
            "a misspelt session key of a model stage (its flattened keys)",
            format!(
                "{GOOD}\n[[stage]]\nid = \"m\"\nuses = \"model.onnx\"\ninput = \"files\"\nmodel = \"m.onnx\"\nthread = 2\n"
            ),
            vec![],
            "p.toml:20:1",
            "did you mean `threads`?",
        ),
        (
            "a bad session value of a model stage",
            format!(
                "{GOOD}\n[[stage]]\nid = \"m\"\nuses = \"model.generate\"\ninput = \"files\"\nmodel = \"m\"\n\
                 optimization = \"max\"\n"
            ),
            vec![],
            "p.toml:20:16",
            "allowed values: \"disable\", \"basic\", \"extended\", \"all\"",
        ),
    ]
}

#[test]
fn every_bad_config_class_is_a_located_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    for (what, pipeline, args, location, needle) in cases() {
        write(dir.path(), "p.toml", &pipeline);
        for verb in ["validate", "run"] {
            let mut all = vec![verb, "p.toml"];
            all.extend(&args);
            let out = pipe_output(&all, dir.path());
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{what} ({verb}): exit code\n{t}");
            assert!(t.contains(location), "{what} ({verb}): no location {location}\n{t}");
            assert!(t.contains(needle), "{what} ({verb}): no {needle:?}\n{t}");
            assert!(!t.contains("panicked"), "{what} ({verb}) panicked\n{t}");
        }
    }
}

#[test]
fn a_bad_value_from_scheduler_config_json_is_reported_at_scheduler_config_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    write(dir.path(), "p.toml", diffuse("scheduler_config = \"sched.json\""));
    for (json, needle) in [
        (
            r#"{"_class_name": "DDIMScheduler", "beta_end": 1.5}"#,
            "sched.json, field `beta_end`: beta_start (0.0001) and beta_end (1.5) must give betas within (0, 1)",
        ),
        (
            r#"{"clip_sample": true, "clip_sample_range": 0.0}"#,
            "sched.json, field `clip_sample_range`: clip_sample_range must be positive, got 0",
        ),
        (r#"{"timestep_spacing": "even"}"#, "sched.json, field `timestep_spacing`: unknown timestep_spacing \"even\""),
        (
            r#"{"num_train_timesteps": 1000000}"#,
            "sched.json, field `num_train_timesteps`: 1000000 is more than the limit",
        ),
    ] {
        write(dir.path(), "sched.json", json);
        for verb in ["validate", "run"] {
            let out = pipe_output(&[verb, "p.toml"], dir.path());
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{json} ({verb}): {t}");
            assert!(t.contains("p.toml:21:20"), "{json} ({verb}): not at scheduler_config\n{t}");
            assert!(t.contains(needle), "{json} ({verb}): no {needle:?}\n{t}");
        }
    }
    // A key in the pipeline file beats the file's field: the schedule is fine, the model is next.
    write(dir.path(), "sched.json", r#"{"beta_end": 1.5}"#);
    write(dir.path(), "p.toml", diffuse("scheduler_config = \"sched.json\"\nbeta_end = 0.012"));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("p.toml:19:9") && !t.contains("beta"), "{t}");
}

#[test]
fn a_huge_value_is_quoted_as_a_bounded_excerpt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let huge = "x".repeat(1 << 20);
    write(dir.path(), "p.toml", GOOD.replace("load = \"text\"", &format!("load = \"{huge}\"")));
    for verb in ["validate", "run"] {
        let out = pipe_output(&[verb, "p.toml"], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{}", &t[..t.len().min(2000)]);
        assert!(t.contains("p.toml:8:8") && t.contains("more characters)"), "{}", &t[..t.len().min(2000)]);
        assert!(out.stderr.len() < 4096, "{verb}: {} bytes of stderr for a 1 MB value", out.stderr.len());
    }
}

#[test]
fn the_good_pipeline_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    write(dir.path(), "p.toml", GOOD);
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_missing_file_and_bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe_output(&["validate", "nope.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot read pipeline file nope.toml"));
    let out = pipe_output(&["run", "--bogus"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let out = pipe_output(&["graph", "x.toml", "--format", "svg"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_url_pipe_cannot_write_is_a_diagnostic_not_a_local_folder() {
    // sink.table path = "s3://..." once wrote a local folder named `s3:` and exited 0.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    write(dir.path(), "p.toml", GOOD.replace("path = \"out.parquet\"", "path = \"https://host/out.parquet\""));
    for verb in ["validate", "run"] {
        let out = pipe_output(&[verb, "p.toml"], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains("p.toml:13:8") && t.contains("is an https:// URL, which pipe can read but not write"),
            "{t}"
        );
    }
    assert!(!dir.path().join("out/https:").exists() && !dir.path().join("https:").exists());
}
