//! The corpus of bad inputs: each case sets up a folder (a pipeline file and its inputs, from
//! tests/fixtures/bad or made on the spot where a file cannot be committed, such as a name with
//! non-UTF-8 bytes), runs `pipe`, and states the exit code, words the message must hold, and how
//! many rows the input has, so that rows written + rows rejected is checked against it.
#![allow(dead_code)]

pub mod files;
pub mod pipelines;
pub mod tables;

use std::path::{Path, PathBuf};

/// One bad input.
pub struct Case {
    /// What is bad, for the failure message.
    pub name: &'static str,
    /// Writes the pipeline (`p.toml`) and its inputs into the folder.
    pub setup: Box<dyn Fn(&Path)>,
    /// The `pipe` arguments, e.g. `["run", "p.toml", "--quiet"]`.
    pub args: Vec<String>,
    /// The exit code `pipe` must give.
    pub exit: i32,
    /// Words stdout + stderr must contain (the file, the line, the cause).
    pub says: Vec<&'static str>,
    /// For runs that write a table: the rows the input holds and the Parquet file (under the
    /// folder) they are written to; rows written + rows rejected (run.json) must equal it.
    pub rows: Option<(u64, &'static str)>,
    /// Words rejects.jsonl (beside that Parquet file) must hold: the file, the line, the cause.
    pub rejects: Vec<String>,
}

impl Case {
    /// A case that runs `p.toml` with `pipe run --quiet`.
    pub fn run(name: &'static str, setup: impl Fn(&Path) + 'static) -> Case {
        Case {
            name,
            setup: Box::new(setup),
            args: vec!["run".into(), "p.toml".into(), "--quiet".into()],
            exit: 0,
            says: Vec::new(),
            rows: None,
            rejects: Vec::new(),
        }
    }

    /// A case that runs `pipe validate p.toml`.
    pub fn validate(name: &'static str, setup: impl Fn(&Path) + 'static) -> Case {
        Case { args: vec!["validate".into(), "p.toml".into()], ..Case::run(name, setup) }
    }

    /// The exit code it must give.
    pub fn exits(mut self, code: i32) -> Case {
        self.exit = code;
        self
    }

    /// Words the output must hold.
    pub fn says(mut self, words: &[&'static str]) -> Case {
        self.says.extend_from_slice(words);
        self
    }

    /// Words rejects.jsonl must hold (checked with the row count of [`Case::accounts`]).
    pub fn rejects(mut self, words: &[&str]) -> Case {
        self.rejects.extend(words.iter().map(|w| w.to_string()));
        self
    }

    /// The input's row count and the Parquet file the rows go to.
    pub fn accounts(mut self, total: u64, parquet: &'static str) -> Case {
        self.rows = Some((total, parquet));
        self
    }
}

/// The committed corpus folder.
pub fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

/// Copies a corpus file into the case's folder under `name`.
pub fn copy(dir: &Path, corpus_file: &str, name: &str) {
    let to = dir.join(name);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(corpus().join(corpus_file), &to).unwrap_or_else(|e| panic!("{corpus_file}: {e}"));
}

/// Writes the pipeline file `p.toml`.
pub fn pipeline(dir: &Path, text: &str) {
    std::fs::write(dir.join("p.toml"), text).unwrap();
}
