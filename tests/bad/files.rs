//! Corpus cases: files. Bad images (tests/fixtures/bad/images, made by make_bad_images.py beside
//! them) through collect.files -> preprocess.image -> sink.table cost only their row with
//! on_error = "skip" and stop the run naming the file with "fail"; file names with spaces,
//! quotes, a newline and bytes that are not UTF-8 (made here: git handles them badly) are read
//! and keep exact ids; zero-length files are empty values, not errors.

use std::path::Path;

use super::{Case, copy, pipeline};

/// The bad images of the corpus, each with words of its error (the cause, not the file name).
const BAD_IMAGES: [(&str, &str); 12] = [
    ("truncated.png", "unexpected end of file"),
    ("truncated.jpg", "the JPEG is truncated (it has no end-of-image marker)"),
    ("truncated-header.jpg", "cannot read the image header"),
    ("bitflip.png", "CRC error"),
    ("bitflip.jpg", "SOF"),
    ("empty.png", "not a PNG or JPEG image"),
    ("huge.png", "100000x100000 is 10000000000 pixels, more than max_pixels"),
    ("huge.jpg", "65500x65500 is 4290250000 pixels, more than max_pixels"),
    ("bad-ihdr.png", "bit depth"),
    ("zero-width.png", "dimensions"),
    ("bad-huffman.jpg", "Huffman"),
    ("not-an-image.png", "not a PNG or JPEG image"),
];

/// The cases.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (file, cause) in BAD_IMAGES {
        cases.push(
            Case::run(named(format!("{file} with on_error = \"skip\"")), move |dir| {
                good_images(dir);
                copy(dir, &format!("images/{file}"), &format!("images/{file}"));
                pipeline(dir, &images_pipeline("skip"));
            })
            .accounts(4, "out/rows.parquet")
            .rejects(&[file, cause]),
        );
        cases.push(
            Case::run(named(format!("{file} with on_error = \"fail\"")), move |dir| {
                good_images(dir);
                copy(dir, &format!("images/{file}"), &format!("images/{file}"));
                pipeline(dir, &images_pipeline("fail"));
            })
            .exits(1)
            .says(&[file, cause]),
        );
    }
    cases.push(
        Case::run("every bad image in one folder, batches of good and bad rows", |dir| {
            good_images(dir);
            for (file, _) in BAD_IMAGES {
                copy(dir, &format!("images/{file}"), &format!("images/{file}"));
            }
            pipeline(dir, &images_pipeline("skip").replace("max_rejects", "batch_size = 4\nmax_rejects"));
        })
        .accounts(3 + BAD_IMAGES.len() as u64, "out/rows.parquet"),
    );
    cases.extend(name_cases());
    cases.extend(empty_file_cases());
    cases
}

/// A case name made at run time (the test binary holds the few it makes for its whole life).
fn named(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

fn good_images(dir: &Path) {
    copy(dir, "images/good.png", "images/good.png");
    copy(dir, "images/good.jpg", "images/good.jpg");
    copy(dir, "images/good-progressive.jpg", "images/good-progressive.jpg");
}

/// collect.files over `images` -> preprocess.image -> sink.table, with `on_error`.
fn images_pipeline(on_error: &str) -> String {
    format!(
        r#"[pipeline]
name = "bad-images"
on_error = "{on_error}"
max_rejects = -1

[[stage]]
id = "files"
uses = "collect.files"
path = "images"

[[stage]]
id = "pixels"
uses = "preprocess.image"
size = [8, 8]

[[stage]]
id = "save"
uses = "sink.table"
path = "rows.parquet"
columns = ["id", "pixels"]
"#
    )
}

/// collect.files over `data` (only the ids `include`, when given) -> sink.table.
fn files_pipeline(load: &str, include: &[&str], on_error: &str) -> String {
    let include = if include.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = include.iter().map(|id| toml_string(id)).collect();
        format!("include = [{}]\n", quoted.join(", "))
    };
    format!(
        r#"[pipeline]
name = "names"
on_error = "{on_error}"
max_rejects = -1

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
load = "{load}"
{include}
[[stage]]
id = "save"
uses = "sink.table"
path = "rows.parquet"
"#
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// Writes `bytes` at `<folder>/<name>`, the name given as raw bytes (on Unix, any but NUL; '/'
/// separates folders).
#[cfg(unix)]
fn write_raw(dir: &Path, folder: &str, name: &[u8], bytes: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join(folder).join(std::ffi::OsStr::from_bytes(name));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// File names that are awkward: each id is given exactly in `include`, so a row is written only
/// when its id is what the module doc of collect.files says.
#[cfg(unix)]
fn name_cases() -> Vec<Case> {
    const NAMES: [(&[u8], &str); 6] = [
        (b"with space.bin", "with space.bin"),
        (b"quote\"s and 'apostrophes'.bin", "quote\"s and 'apostrophes'.bin"),
        (b"new\nline.bin", "new\nline.bin"),
        (b"100%.bin", "100%.bin"),
        (b"caf\xe9.bin", "caf%E9.bin"),
        (b"d\xff 50%/x.bin", "d%FF 50%25/x.bin"),
    ];
    vec![
        Case::run("names with spaces, quotes, a newline and non-UTF-8 bytes are read by their real paths", |dir| {
            for (name, _) in NAMES {
                write_raw(dir, "data", name, name);
            }
            let ids: Vec<&str> = NAMES.iter().map(|(_, id)| *id).collect();
            pipeline(dir, &files_pipeline("bytes", &ids, "fail"));
        })
        .accounts(NAMES.len() as u64, "out/rows.parquet"),
        Case::run("a non-UTF-8 name is reported by its escaped id", |dir| {
            write_raw(dir, "data", b"fine.txt", b"fine");
            write_raw(dir, "data", b"caf\xe9.txt", b"not \xff UTF-8 text");
            pipeline(dir, &files_pipeline("text", &[], "fail"));
        })
        .exits(1)
        .says(&["caf%E9.txt", "UTF-8"]),
        Case::run("a non-UTF-8 name whose escape is another file's name costs that row only", |dir| {
            write_raw(dir, "data", b"a%FF", b"literal");
            write_raw(dir, "data", b"a\xff", b"escaped");
            write_raw(dir, "data", b"b", b"other");
            pipeline(dir, &files_pipeline("bytes", &[], "skip"));
        })
        .accounts(3, "out/rows.parquet"),
        Case::run("a bad image with a non-UTF-8 name is named by its escaped id", |dir| {
            good_images(dir);
            let bytes = std::fs::read(super::corpus().join("images/truncated.png")).unwrap();
            write_raw(dir, "images", b"bad\xff.png", &bytes);
            pipeline(dir, &images_pipeline("fail"));
        })
        .exits(1)
        .says(&["bad%FF.png", "cannot decode"]),
    ]
}

#[cfg(not(unix))]
fn name_cases() -> Vec<Case> {
    Vec::new()
}

/// Zero-length files are values, not errors: "" with load = "text", empty bytes with "bytes".
fn empty_file_cases() -> Vec<Case> {
    ["text", "bytes", "none"]
        .into_iter()
        .map(|load| {
            Case::run(named(format!("zero-length files are empty values with load = \"{load}\"")), move |dir| {
                std::fs::create_dir_all(dir.join("data/sub")).unwrap();
                std::fs::write(dir.join("data/empty.txt"), "").unwrap();
                std::fs::write(dir.join("data/sub/empty"), "").unwrap();
                std::fs::write(dir.join("data/full.txt"), "text").unwrap();
                pipeline(dir, &files_pipeline(load, &[], "fail"));
            })
            .accounts(3, "out/rows.parquet")
        })
        .collect()
}
