//! Corpus cases: pipeline files with values past a limit or of the wrong kind
//! (tests/fixtures/bad/pipelines). Each is refused by `pipe validate` and by `pipe run` before any
//! work, at its key, with the limit in the message; none panics or aborts.

use std::path::Path;

use super::{Case, corpus};

/// Copies a corpus pipeline to `p.toml`, with `{repo}` standing for the repository root.
fn pipeline_from(name: &'static str) -> impl Fn(&Path) + 'static {
    move |dir: &Path| {
        let text = std::fs::read_to_string(corpus().join("pipelines").join(name)).unwrap();
        let repo = env!("CARGO_MANIFEST_DIR");
        std::fs::write(dir.join("p.toml"), text.replace("{repo}", repo)).unwrap();
    }
}

/// The cases: each file through `validate` and `run` (file, exit code, words the message holds).
pub fn cases() -> Vec<Case> {
    let refused: [(&'static str, &'static [&'static str]); 6] = [
        ("batch-size-4294967296.toml", &["p.toml:4:14", "batch_size 4294967296 is more than the limit, 1048576"]),
        ("batch-size-i64-max.toml", &["p.toml:4:14", "is more than the limit, 1048576"]),
        ("latent-shape-overflow.toml", &["p.toml:9:9", "more than 268435456 values per row"]),
        ("uncond-inf.toml", &["p.toml:20:10", "inf is not a finite number"]),
        (
            "model-is-a-folder.toml",
            &["p.toml:14:9", "is a folder, not an .onnx file; it holds discriminator.onnx, generator.onnx"],
        ),
        ("output-dir-is-a-file.toml", &["p.toml:4:14", "is a file, not a folder"]),
    ];
    let mut cases = Vec::new();
    for (file, says) in refused {
        cases.push(Case::validate(file, pipeline_from(file)).exits(2).says(says));
        cases.push(Case::run(file, pipeline_from(file)).exits(2).says(says));
    }
    cases.push(
        Case::run("grid-too-large.toml", pipeline_from("grid-too-large.toml"))
            .exits(1)
            .says(&["stage `grid`", "more than the limit of 268435456; lower limit, columns or scale"]),
    );
    cases
}
