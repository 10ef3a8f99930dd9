//! A property-based fuzz harness over pipeline files: the project's own pipelines, mutated (values
//! swapped for extreme or odd ones, keys added and removed, lines dropped, duplicated and swapped,
//! bytes flipped, text cut short), go through parse, plan and validate in-process, as
//! `pipe validate` runs them. Whatever the input: no panic, and every error is a located
//! diagnostic (file:line:col) that exits 2.
//!
//! A normal run tries `DEFAULT_CASES` files from a fixed seed (the same cases every run);
//! `PIPE_FUZZ_CASES=N` tries N, and `PIPE_FUZZ_SEED=S` draws others.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pipeline::config::PipelineFile;
use pipeline::plan::{Plan, PlanOptions};
use pipeline::{Error, Registry};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

const DEFAULT_CASES: u32 = 3000;

/// The pipelines mutated: every example that validates without starting a process plugin (those
/// spawn Python on each build, too slow for thousands of cases; tests/process.rs covers them).
const SEEDS: &[&str] = &[
    "pipeline.toml",
    "examples/digits/pipeline.toml",
    "examples/gan/pipeline.toml",
    "examples/vae/pipeline.toml",
    "examples/diffusion/pipeline.toml",
    "examples/text/pipeline.toml",
    "examples/table-sql/pipeline.toml",
    "examples/text-stats/pipeline.toml",
];

/// Values that have broken parsers and planners before: limits of every integer type, floats
/// that are not numbers, empty and huge strings, paths that leave the folder or name devices,
/// and every TOML type where another is expected.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "1e-320",
    "inf",
    "-inf",
    "nan",
    "0.0",
    "-0.0",
    "0.5",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\" \"",
    "\".\"",
    "\"..\"",
    "\"/\"",
    "\"../../..\"",
    "\"/etc/passwd\"",
    "\"*\"",
    "\"**/*\"",
    "\"[\"",
    "\"{a,b\"",
    "\"${PIPE_FUZZ_UNSET}\"",
    "\"${PIPE_FUZZ_UNSET:-x}\"",
    "\"${\"",
    "\"\\u0000\"",
    "\"é\"",
    "\"out.parquet\"",
    "\"out.xyz\"",
    "\"s3://\"",
    "\"ftp://host/key\"",
    "\"SELECT * FROM batch\"",
    "\"SELECT id, 1/0 AS x FROM batch\"",
    "\"fail\"",
    "\"skip\"",
    "\"cuda\"",
    "[]",
    "[0]",
    "[-1]",
    "[1, 0]",
    "[4294967296, 4294967296]",
    "[9223372036854775807, 2]",
    "[1, 2, 3, 4, 5, 6, 7, 8, 9]",
    "[\"\"]",
    "[\"cuda\", \"cpu\"]",
    "[[1]]",
    "[1, \"a\"]",
    "{}",
    "{ a = 1 }",
    "{ \"\" = \"\" }",
    "1979-05-27T07:32:00Z",
];

/// Fragments inserted into the text at random places.
const FRAGMENTS: &[&str] = &[
    "[[stage]]\n",
    "[pipeline]\n",
    "[runtime]\n",
    "\n[[stage]]\nid = \"x\"\nuses = \"sink.table\"\npath = \"x.csv\"\n",
    "\n[[stage]]\nid = \"y\"\nuses = \"collect.latent\"\ncount = 3\nshape = [2]\n",
    "input = \"x\"\n",
    "\"",
    "=",
    "[",
    "]",
    "{",
    "}\n",
    "#",
    "\n",
    "\\",
    "\u{0}",
    "\u{feff}",
    "é",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replaces the value of the n-th `key = value` line.
    Value(usize, usize),
    /// Adds `key = value` after the n-th line, the key taken from the plugins' params.
    AddKey(usize, usize, usize),
    DropLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Insert(usize, usize),
    FlipByte(usize, u8),
    Truncate(usize),
    /// A 256 KB value, to check that diagnostics quote a bounded excerpt.
    Huge(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let n = 0usize..10_000;
    prop_oneof![
        6 => (n.clone(), 0..VALUES.len()).prop_map(|(l, v)| Mutation::Value(l, v)),
        3 => (n.clone(), 0usize..1000, 0..VALUES.len()).prop_map(|(l, k, v)| Mutation::AddKey(l, k, v)),
        2 => n.clone().prop_map(Mutation::DropLine),
        1 => n.clone().prop_map(Mutation::DuplicateLine),
        1 => (n.clone(), n.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (n.clone(), 0..FRAGMENTS.len()).prop_map(|(p, f)| Mutation::Insert(p, f)),
        2 => (n.clone(), any::<u8>()).prop_map(|(p, b)| Mutation::FlipByte(p, b)),
        1 => n.clone().prop_map(Mutation::Truncate),
        1 => n.prop_map(Mutation::Huge),
    ]
}

fn apply(text: &str, m: &Mutation, keys: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let value_lines: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
    let pick = |n: usize, len: usize| n % len.max(1);
    match m {
        Mutation::Value(l, _) | Mutation::Huge(l) if !value_lines.is_empty() => {
            let i = value_lines[pick(*l, value_lines.len())];
            let key = lines[i].split(" = ").next().unwrap_or("").to_string();
            let value = match m {
                Mutation::Value(_, v) => VALUES[*v].to_string(),
                _ => format!("\"{}\"", "a".repeat(1 << 18)),
            };
            lines[i] = format!("{key} = {value}");
        }
        Mutation::AddKey(l, k, v) => {
            let i = pick(*l, lines.len());
            lines.insert(i + 1, format!("{} = {}", keys[pick(*k, keys.len())], VALUES[*v]));
        }
        Mutation::DropLine(l) => {
            lines.remove(pick(*l, lines.len()));
        }
        Mutation::DuplicateLine(l) => {
            let i = pick(*l, lines.len());
            lines.insert(i, lines[i].clone());
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (pick(*a, lines.len()), pick(*b, lines.len()));
            lines.swap(a, b);
        }
        Mutation::Insert(p, f) => {
            let mut bytes = lines.join("\n").into_bytes();
            let at = pick(*p, bytes.len() + 1);
            bytes.splice(at..at, FRAGMENTS[*f].bytes());
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::FlipByte(p, b) => {
            let mut bytes = lines.join("\n").into_bytes();
            let at = pick(*p, bytes.len());
            if let Some(byte) = bytes.get_mut(at) {
                *byte ^= b | 1;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Truncate(p) => {
            let text = lines.join("\n");
            let mut at = pick(*p, text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        Mutation::Value(..) | Mutation::Huge(_) => {}
    }
    lines.join("\n") + "\n"
}

/// Every key a stage table can hold: the plugins' params and the engine's own.
fn stage_keys(registry: &Registry) -> Vec<String> {
    let mut keys: Vec<String> = ["id", "uses", "input", "on_error", "seed", "batch_size", "max_rejects", "output_dir"]
        .map(String::from)
        .to_vec();
    for plugin in registry.iter() {
        keys.extend(plugin.doc().params.into_iter().map(|p| p.name));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// What validating one mutated file did.
enum Outcome {
    Valid,
    Invalid,
}

fn validate(registry: &Registry, path: &Path, text: String, out_dir: &Path) -> Result<Outcome, String> {
    let dir = path.parent().unwrap().to_path_buf();
    let _ = out_dir;
    let options = PlanOptions { validate_only: true, ..PlanOptions::default() };
    let result = PipelineFile::parse(path, dir, text, &[])
        .map_err(Error::from)
        .and_then(|file| Plan::build(file, registry, &options));
    let err = match result {
        Ok(_) => return Ok(Outcome::Valid),
        Err(e) => e,
    };
    if err.exit_code() != 2 {
        return Err(format!("exit code {} for: {err}", err.exit_code()));
    }
    let Error::Invalid(d) = err.root() else { return Err(format!("not a located diagnostic: {err}")) };
    if d.location.is_none() {
        return Err(format!("no location: {d}"));
    }
    let shown = d.to_string();
    if shown.len() > 4096 {
        return Err(format!("a {}-byte diagnostic: {}...", shown.len(), &shown[..300]));
    }
    Ok(Outcome::Invalid)
}

#[test]
fn mutated_pipelines_never_panic_and_every_error_is_located() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let registry = pipe::registry();
    let keys = stage_keys(&registry);
    let seeds: Vec<(PathBuf, String)> = SEEDS
        .iter()
        .map(|s| {
            let path = repo.join(s);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{s}: {e}"));
            (path, text)
        })
        .collect();
    // Each seed validates as it is, so the mutations, not the seeds, are what fails.
    let out = tempfile::tempdir().unwrap();
    for (path, text) in &seeds {
        assert!(
            matches!(validate(&registry, path, text.clone(), out.path()), Ok(Outcome::Valid)),
            "{} does not validate",
            path.display()
        );
    }

    // The last panic's text, for the report of a case that panicked (caught below, or in a
    // decoder's own boundary, which is fine: only a panic that escapes validation fails).
    let panics: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = panics.clone();
    std::panic::set_hook(Box::new(move |info| seen.lock().unwrap().push(info.to_string())));

    let cases = std::env::var("PIPE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    let seed = std::env::var("PIPE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let config = Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let counts = Mutex::new((0u32, 0u32));
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..4));
    let result = runner.run(&strategy, |(seed, mutations)| {
        let (path, text) = &seeds[seed];
        let text = mutations.iter().fold(text.clone(), |t, m| apply(&t, m, &keys));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            validate(&registry, path, text.clone(), out.path())
        }));
        let excerpt = || text.chars().take(2000).collect::<String>();
        match outcome {
            Ok(Ok(o)) => {
                let mut c = counts.lock().unwrap();
                match o {
                    Outcome::Valid => c.0 += 1,
                    Outcome::Invalid => c.1 += 1,
                }
                Ok(())
            }
            Ok(Err(why)) => Err(TestCaseError::fail(format!(
                "{why}\n--- {} mutated by {mutations:?}:\n{}",
                path.display(),
                excerpt()
            ))),
            Err(_) => Err(TestCaseError::fail(format!(
                "panicked: {:?}\n--- {} mutated by {mutations:?}:\n{}",
                panics.lock().unwrap().last(),
                path.display(),
                excerpt()
            ))),
        }
    });
    let _ = std::panic::take_hook();
    let (valid, invalid) = *counts.lock().unwrap();
    eprintln!("{cases} cases: {valid} valid, {invalid} invalid with a located diagnostic");
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(invalid > cases / 4, "too few mutations were invalid ({invalid} of {cases}): the harness is not biting");
}
