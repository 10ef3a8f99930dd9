//! model.generate on real decoders: the golden sequences of tiny-random-gpt2 (greedy and beam
//! search, from onnxruntime-genai's test suite), sampling that is reproducible and does not depend
//! on the batch size, text prompts through tokenizer.json, and the same tokens with and without a
//! KV cache on the project's own model.

mod common;

use std::path::Path;

use arrow::array::{Array, Int32Array, ListArray, StringArray};
use common::{pipe_output, read_parquet, repo, run_json, text, write};

fn gpt2() -> std::path::PathBuf {
    repo().join("tests/fixtures/tiny-random-gpt2")
}

/// A pipeline over prompts in `prompts.jsonl` with the given model.generate keys.
fn pipeline(keys: &str, batch_size: usize) -> String {
    format!(
        r#"[pipeline]
name = "generate"
batch_size = {batch_size}

[[stage]]
id = "prompts"
uses = "collect.table"
path = "prompts.jsonl"
id_column = "id"

[[stage]]
id = "generate"
uses = "model.generate"
threads = 1
{keys}

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#
    )
}

fn run(dir: &Path, prompts: &str, pipeline_text: &str) -> arrow::record_batch::RecordBatch {
    write(dir, "prompts.jsonl", prompts);
    write(dir, "p.toml", pipeline_text);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    read_parquet(&dir.join("out/out.parquet"))
}

fn tokens(batch: &arrow::record_batch::RecordBatch) -> Vec<Vec<i32>> {
    let list = batch.column_by_name("tokens").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
    (0..list.len()).map(|r| list.value(r).as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec()).collect()
}

fn strings(batch: &arrow::record_batch::RecordBatch, column: &str) -> Vec<String> {
    let a = batch.column_by_name(column).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|r| a.value(r).to_string()).collect()
}

fn id_prompts(prompts: &[&[i32]]) -> String {
    prompts.iter().enumerate().map(|(i, p)| format!("{{\"id\": \"{i}\", \"ids\": {p:?}}}\n")).collect()
}

#[test]
fn greedy_reproduces_the_golden_sequences() {
    let prompts = id_prompts(&[&[0, 0, 0, 52], &[0, 0, 195, 731]]);
    let expected =
        vec![vec![0, 0, 0, 52, 204, 204, 204, 204, 204, 204], vec![0, 0, 195, 731, 731, 114, 114, 114, 114, 114]];
    for batch_size in [2, 1] {
        let dir = tempfile::tempdir().unwrap();
        let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 10", gpt2().display());
        let out = run(dir.path(), &prompts, &pipeline(&keys, batch_size));
        assert_eq!(tokens(&out), expected, "batch_size {batch_size}");
        assert_eq!(strings(&out, "finish_reason"), vec!["length", "length"]);
    }
}

#[test]
fn beam_search_reproduces_the_golden_sequences() {
    let prompts = id_prompts(&[
        &[0, 0, 0, 0, 0, 52, 195, 731, 321, 301, 734, 620],
        &[41, 554, 74, 622, 206, 222, 75, 223, 221, 198, 224, 572],
        &[0, 0, 0, 52, 328, 219, 328, 206, 288, 227, 896, 328],
    ]);
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 20\nnum_beams = 4\nlength_penalty = 1.0",
        gpt2().display()
    );
    let out = run(dir.path(), &prompts, &pipeline(&keys, 3));
    assert_eq!(
        tokens(&out),
        vec![
            vec![0, 0, 0, 0, 0, 52, 195, 731, 321, 301, 734, 620, 131, 131, 131, 181, 638, 638, 638, 638],
            vec![41, 554, 74, 622, 206, 222, 75, 223, 221, 198, 224, 572, 292, 292, 292, 292, 292, 292, 292, 292],
            vec![0, 0, 0, 52, 328, 219, 328, 206, 288, 227, 896, 328, 328, 669, 669, 669, 669, 669, 669, 669],
        ]
    );
}

#[test]
fn sampling_is_reproducible_and_independent_of_the_batch() {
    // Prompts of different lengths, so batches of 3 are left-padded and batches of 1 are not.
    let prompts = id_prompts(&[&[52], &[0, 0, 195, 731], &[41, 554, 74], &[328, 219], &[7, 8, 9, 10, 11]]);
    let keys = format!(
        "model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 12\ndo_sample = true\ntemperature = 1.5\ntop_k = 50\ntop_p = 0.95\nrepetition_penalty = 1.2",
        gpt2().display()
    );
    let mut seen = Vec::new();
    for batch_size in [1, 3, 3] {
        let dir = tempfile::tempdir().unwrap();
        seen.push(tokens(&run(dir.path(), &prompts, &pipeline(&keys, batch_size))));
    }
    assert_eq!(seen[0], seen[1], "batch size 1 and 3 differ");
    assert_eq!(seen[1], seen[2], "reruns differ");
    assert!(seen[0].iter().all(|t| t.len() > 5), "every row generated");
    // Sampling is not greedy: at least one row differs from the greedy continuation.
    let greedy_keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 12", gpt2().display());
    let dir = tempfile::tempdir().unwrap();
    let greedy = tokens(&run(dir.path(), &prompts, &pipeline(&greedy_keys, 5)));
    assert_ne!(greedy, seen[0]);
    // Another seed gives other samples.
    let dir = tempfile::tempdir().unwrap();
    let reseeded = pipeline(&keys, 3).replace("batch_size = 3\n", "batch_size = 3\nseed = 99\n");
    assert_ne!(tokens(&run(dir.path(), &prompts, &reseeded)), seen[0]);
}

#[test]
fn text_prompts_go_through_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let prompts =
        "{\"id\": \"a\", \"prompt\": \" to be or not to be\"}\n{\"id\": \"b\", \"prompt\": \" he said, and the\"}\n";
    let keys = format!("model = \"{}\"\nmax_new_tokens = 6\nstop = []", gpt2().display());
    let out = run(dir.path(), prompts, &pipeline(&keys, 2));
    let t = tokens(&out);
    // Token ids of the prompts in GPT-2's byte-level BPE.
    assert_eq!(&t[0][..6], &[284, 307, 393, 407, 284, 307]);
    assert_eq!(&t[1][..5], &[339, 531, 11, 290, 262]);
    assert_eq!(t[0].len(), 12);
    let texts = strings(&out, "text");
    assert!(!texts[0].is_empty() && !texts[0].contains(" to be or not to be"), "{texts:?}");
}

#[test]
fn bad_generate_configs_fail_at_validate_time() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "prompts.jsonl", "{\"id\": \"0\", \"ids\": [1, 2]}\n");
    let cases = [
        (
            format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 5\nmax_new_tokens = 3", gpt2().display()),
            "not both",
        ),
        (format!("model = \"{}\"\nprompt_ids = \"idz\"", gpt2().display()), "no column `idz`"),
        (format!("model = \"{}\"\nprompt_ids = \"ids\"\ntop_p = 1.5", gpt2().display()), "top_p"),
        ("model = \"missing-model\"\nprompt_ids = \"ids\"".to_string(), "does not exist"),
    ];
    for (keys, expected) in cases {
        write(dir.path(), "p.toml", pipeline(&keys, 2));
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{keys}: {}", text(&out));
        assert!(text(&out).contains(expected), "{keys}: {}", text(&out));
        assert!(text(&out).contains("generate"), "names the stage: {}", text(&out));
    }
}

fn tiny_gpt() -> std::path::PathBuf {
    repo().join("examples/models/tiny-gpt")
}

#[test]
fn the_project_model_matches_its_reference_with_and_without_the_cache() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_gpt().join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    // Text prompts (through tokenizer.json) for the cases without a BOS, token ids for the others.
    let mut text_prompts = String::new();
    let mut id_prompts = String::new();
    let mut expected_text = Vec::new();
    let mut expected_ids = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let tokens: Vec<i32> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect();
        if case["bos_prepended"].as_bool().unwrap() {
            id_prompts.push_str(&format!("{{\"id\": \"{i:02}\", \"ids\": {}}}\n", case["prompt_ids"]));
            expected_ids.push(tokens);
        } else {
            text_prompts.push_str(&format!("{{\"id\": \"{i:02}\", \"prompt\": {}}}\n", case["prompt"]));
            expected_text.push((tokens, case["text"].as_str().unwrap().to_string()));
        }
    }
    let tokenizer = tiny_gpt().join("tokenizer.json");
    for model in [tiny_gpt(), tiny_gpt().join("model_nocache.onnx")] {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            format!("model = \"{}\"\ntokenizer = \"{}\"\nmax_new_tokens = 20", model.display(), tokenizer.display());
        let out = run(dir.path(), &text_prompts, &pipeline(&keys, 4));
        assert_eq!(
            tokens(&out),
            expected_text.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
            "{}",
            model.display()
        );
        assert_eq!(strings(&out, "text"), expected_text.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>());
        let dir = tempfile::tempdir().unwrap();
        let keys = format!(
            "model = \"{}\"\ntokenizer = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 20",
            model.display(),
            tokenizer.display()
        );
        let out = run(dir.path(), &id_prompts, &pipeline(&keys, 3));
        assert_eq!(tokens(&out), expected_ids, "{}", model.display());
    }
}

#[test]
fn stop_strings_end_a_row_and_cut_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = "{\"id\": \"a\", \"prompt\": \"Once upon a time, there was a little cat named\"}\n";
    let keys = format!("model = \"{}\"\nmax_new_tokens = 30\nstop = [\".\"]", tiny_gpt().display());
    let out = run(dir.path(), prompts, &pipeline(&keys, 1));
    assert_eq!(strings(&out, "finish_reason"), vec!["stop"]);
    // The greedy continuation of the reference, cut before its first ".".
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_gpt().join("reference.json")).unwrap()).unwrap();
    let case = reference["cases"].as_array().unwrap().iter().find(|c| !c["bos_prepended"].as_bool().unwrap()).unwrap();
    assert_eq!(case["prompt"], "Once upon a time, there was a little cat named");
    let full = case["text"].as_str().unwrap();
    assert_eq!(strings(&out, "text"), vec![full[..full.find('.').unwrap()].to_string()]);

    // A stop string of several tokens, far into the continuation, is seen as soon as it is
    // complete (the stage decodes only a window of the last tokens each step).
    let keys = format!("model = \"{}\"\nmax_new_tokens = 30\nstop = [\"very gentle\"]", tiny_gpt().display());
    let out = run(dir.path(), prompts, &pipeline(&keys, 1));
    assert_eq!(strings(&out, "finish_reason"), vec!["stop"]);
    assert_eq!(strings(&out, "text"), vec![full[..full.find("very gentle").unwrap()].to_string()]);
}

#[test]
fn a_prompt_with_a_null_token_id_rejects_its_row_through_on_error() {
    // A null token id was read as token 0.
    let dir = tempfile::tempdir().unwrap();
    let prompts =
        "{\"id\": \"0\", \"ids\": [1, null, 2]}\n{\"id\": \"1\", \"ids\": [1, 2]}\n{\"id\": \"2\", \"ids\": null}\n";
    let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 3", gpt2().display());
    let pipeline_text = pipeline(&keys, 3).replace("batch_size = 3", "batch_size = 3\non_error = \"skip\"");
    let out = run(dir.path(), prompts, &pipeline_text);
    assert_eq!(strings(&out, "id"), ["1"]);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 2, "{rejects}");
    assert!(rejects.contains("`ids`: token 1 of the prompt is empty"), "{rejects}");
    assert!(rejects.contains("`ids` is empty"), "{rejects}");
}

/// A batch whose every row is rejected leaves nothing to emit, with the per-row cache on (as it
/// is by default) and off; the batches after it go on. It failed under the cache with arrow's
/// "interleave requires input of at least one array".
#[test]
fn a_batch_whose_rows_are_all_rejected_emits_nothing_and_the_run_goes_on() {
    let prompts =
        "{\"id\": \"0\", \"ids\": null}\n{\"id\": \"1\", \"ids\": [1, null]}\n{\"id\": \"2\", \"ids\": [1, 2]}\n";
    let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 3", gpt2().display());
    let pipeline_text = pipeline(&keys, 2).replace("batch_size = 2", "batch_size = 2\non_error = \"skip\"");
    for flags in [&["--quiet"][..], &["--quiet", "--no-cache"][..]] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "prompts.jsonl", prompts);
        write(dir.path(), "p.toml", &pipeline_text);
        let out = pipe_output(&[&["run", "p.toml"][..], flags].concat(), dir.path());
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", text(&out));
        assert_eq!(strings(&read_parquet(&dir.path().join("out/out.parquet")), "id"), ["2"], "{flags:?}");
        let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
        assert_eq!(rejects.lines().count(), 2, "{flags:?}: {rejects}");
    }
}

#[test]
fn a_bad_setting_from_the_model_folder_is_reported_at_model_with_its_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(gpt2()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    write(&folder, "generation_config.json", r#"{"top_p": 1.5}"#);
    write(dir.path(), "prompts.jsonl", "{\"id\": \"0\", \"ids\": [1, 2]}\n");
    write(dir.path(), "p.toml", pipeline("model = \"m\"\nprompt_ids = \"ids\"", 2));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("p.toml:15:9"), "not at model: {t}");
    assert!(t.contains("generation_config.json, field `top_p`: top_p 1.5 is not in (0, 1]"), "{t}");
    // The key beats the file.
    write(dir.path(), "p.toml", pipeline("model = \"m\"\nprompt_ids = \"ids\"\ntop_p = 0.9", 2));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The project's tiny-gpt has 128 positions: a batch holding a 200-token prompt fails in ONNX
/// Runtime for every row (the batch is padded to its longest prompt). Under on_error = "skip" the
/// batch is generated again a row at a time: only the long prompt is rejected, and the others get
/// the tokens a run without it gives. Under "fail" the run stops naming the batch's first row.
#[test]
fn a_prompt_the_model_fails_on_is_rejected_alone_under_skip() {
    let long = vec![5; 200];
    let keys = |on_error: &str| {
        format!(
            "model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 4\non_error = \"{on_error}\"",
            tiny_gpt().display()
        )
    };
    let with_long = id_prompts(&[&[1, 2, 3], &long, &[4, 5]]);
    let dir = tempfile::tempdir().unwrap();
    let got = run(dir.path(), &with_long, &pipeline(&keys("skip"), 4));
    assert_eq!(strings(&got, "id"), ["0", "2"]);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(rejects.contains("\"id\":\"1\"") && rejects.contains("generation failed"), "{rejects}");
    let alone = tempfile::tempdir().unwrap();
    let want = run(alone.path(), &id_prompts(&[&[1, 2, 3], &[4, 5]]), &pipeline(&keys("skip"), 4));
    assert_eq!(tokens(&got), tokens(&want));

    write(dir.path(), "p.toml", pipeline(&keys("fail"), 4));
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("stage `generate`: generation failed for rows 0..: "), "{t}");
}

#[test]
fn a_tokenizer_is_read_only_where_its_text_is_wanted() {
    // The model folder with a tokenizer.json that cannot be parsed: it is not read when prompts
    // are token ids and the one sink after names columns without `text`, and it is when the sink
    // takes every column or a stop string needs the decoded text.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gpt2");
    std::fs::create_dir(&model).unwrap();
    for f in ["past.onnx", "genai_config.json"] {
        std::fs::copy(gpt2().join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("tokenizer.json"), "{ not a tokenizer").unwrap();
    let prompts = id_prompts(&[&[0, 0, 0, 52], &[0, 0, 195, 731]]);
    write(dir.path(), "prompts.jsonl", &prompts);
    let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 10", model.display());
    let plain = pipeline(&keys, 2);
    let named =
        plain.replace("path = \"out.parquet\"", "path = \"out.parquet\"\ncolumns = [\"tokens\", \"finish_reason\"]");
    let out = run(dir.path(), &prompts, &named);
    assert_eq!(
        tokens(&out),
        vec![vec![0, 0, 0, 52, 204, 204, 204, 204, 204, 204], vec![0, 0, 195, 731, 731, 114, 114, 114, 114, 114]]
    );
    let with_stop = named.replace("max_length = 10", "max_length = 10\nstop = [\"x\"]");
    for (what, p) in [("every column", plain), ("a stop string", with_stop)] {
        write(dir.path(), "p.toml", &p);
        for command in [&["validate", "p.toml"][..], &["run", "p.toml", "--quiet"]] {
            let out = pipe_output(command, dir.path());
            assert_eq!(out.status.code(), Some(2), "{what}, {command:?}: {}", text(&out));
            assert!(text(&out).contains("tokenizer") && text(&out).contains("cannot read"), "{what}: {}", text(&out));
        }
    }
}

#[test]
fn rows_cached_without_text_are_not_taken_by_a_stage_that_makes_it() {
    // The same stage, once with `text` left out (no one reads it) and once making it: each has
    // its own entries in the row cache, so the second run decodes its text.
    let dir = tempfile::tempdir().unwrap();
    let prompts = id_prompts(&[&[0, 0, 0, 52], &[0, 0, 195, 731]]);
    write(dir.path(), "prompts.jsonl", &prompts);
    let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 10", gpt2().display());
    let plain = pipeline(&keys, 2);
    let named = plain.replace("path = \"out.parquet\"", "path = \"out.parquet\"\ncolumns = [\"tokens\"]");
    for (p, out_dir) in [(&named, "a"), (&plain, "b")] {
        write(dir.path(), "p.toml", p);
        let out = pipe_output(&["run", "p.toml", "--quiet", "--output-dir", out_dir], dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let made = read_parquet(&dir.path().join("b/out.parquet"));
    assert_eq!(strings(&made, "text").len(), 2);
    let named_only = read_parquet(&dir.path().join("a/out.parquet"));
    assert!(named_only.column_by_name("text").is_none());
    assert_eq!(tokens(&made), tokens(&named_only));
    // Stop strings need the decoded text: without any tokenizer they are refused.
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["past.onnx", "genai_config.json"] {
        std::fs::copy(gpt2().join(f), bare.join(f)).unwrap();
    }
    let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nmax_length = 10\nstop = [\"x\"]", bare.display());
    write(dir.path(), "p.toml", pipeline(&keys, 2));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("stop strings"), "{}", text(&out));
}

/// Batches generated at once on sessions of their own give the rows, rejects and errors that one
/// batch at a time gives, in the same order: eleven prompts in stage batches of 2 (six of them,
/// four in the pipeline's first batch of 8), sampled, one of them too long for tiny-gpt's 128
/// positions (its batch fails and is redone a row at a time under skip) and one with a null id.
#[test]
fn concurrent_batches_give_the_rows_and_rejects_of_one_at_a_time() {
    let long = vec![5; 200];
    let mut rows: Vec<Vec<i32>> = (0..11).map(|r| (1..=(1 + r % 4)).map(|t| t * 7 + r).collect()).collect();
    rows[5] = long;
    let mut prompts = id_prompts(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
    prompts = prompts.replace("{\"id\": \"2\", \"ids\": [", "{\"id\": \"2\", \"ids\": [null, ");
    let pipeline_text = |lanes: usize, on_error: &str| {
        let keys = format!(
            "model = \"{}\"\nprompt_ids = \"ids\"\nmax_new_tokens = 6\ndo_sample = true\ntop_k = 20\n\
             batch_size = 2\nconcurrent_batches = {lanes}",
            tiny_gpt().display()
        );
        pipeline(&keys, 8).replace("batch_size = 8\n", &format!("batch_size = 8\non_error = \"{on_error}\"\n"))
    };
    let mut seen = Vec::new();
    for lanes in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "prompts.jsonl", &prompts);
        write(dir.path(), "p.toml", pipeline_text(lanes, "skip"));
        let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let table = std::fs::read(dir.path().join("out/out.parquet")).unwrap();
        let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
        let report = run_json(&dir.path().join("out"));
        let generate = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "generate").unwrap();
        assert_eq!(generate["sessions"], lanes, "{generate}");
        seen.push((table, rejects));
    }
    assert!(seen[0].0 == seen[1].0, "out.parquet differs between 1 and 3 batches at once");
    assert_eq!(seen[0].1, seen[1].1, "rejects.jsonl differs");
    let rejects = &seen[0].1;
    assert_eq!(rejects.lines().count(), 2, "{rejects}");
    assert!(rejects.lines().next().unwrap().contains("\"id\":\"2\""), "{rejects}");
    assert!(rejects.lines().nth(1).unwrap().contains("\"id\":\"5\""), "{rejects}");

    // Under fail, both stop at the same row with the same words.
    let mut errors = Vec::new();
    for lanes in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "prompts.jsonl", prompts.replace("null, ", ""));
        write(dir.path(), "p.toml", pipeline_text(lanes, "fail"));
        let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        errors.push(text(&out).lines().find(|l| l.contains("generation failed")).map(str::to_string));
    }
    assert!(errors[0].as_deref().is_some_and(|e| e.contains("generation failed for rows 4..")), "{errors:?}");
    assert_eq!(errors[0], errors[1]);
}

#[test]
fn concurrent_batches_must_be_a_count() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "prompts.jsonl", "{\"id\": \"0\", \"ids\": [1, 2]}\n");
    for value in ["0", "65"] {
        let keys = format!("model = \"{}\"\nprompt_ids = \"ids\"\nconcurrent_batches = {value}", gpt2().display());
        write(dir.path(), "p.toml", pipeline(&keys, 2));
        let out = pipe_output(&["validate", "p.toml"], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(&format!("concurrent_batches = {value}: give between 1 and 64")), "{t}");
    }
}
