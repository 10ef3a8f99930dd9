//! sink.report writes one self-contained HTML page after the run; headless Chromium (Debian's
//! chromium package, which `.ci/run` installs) loads it and every embedded image decodes.

mod common;

use common::{pipe_output, rendered_dom, text, write};

const PIPELINE: &str = r#"[pipeline]
name = "report-check"
seed = 9

[[stage]]
id = "noise"
uses = "collect.latent"
count = 12
shape = [1, 8, 8]
labels = [0, 1]

[[stage]]
id = "score"
uses = "refine.score"
column = "z"
reduce = "max"

[[stage]]
id = "report"
uses = "sink.report"
title = "A <checked> report"
image = "z"
range = "-1,1"
columns = 6
scale = 3
caption = "{label}"
score = "score"
bins = 8
"#;

#[test]
fn the_report_is_one_html_file_that_renders_with_its_images() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PIPELINE);
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = dir.path().join("out/report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: the grid is embedded, nothing is fetched.
    assert!(html.contains("src=\"data:image/png;base64,"), "embedded grid");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "nothing is fetched");
    assert!(html.contains("<title>A &lt;checked&gt; report</title>"), "the title is escaped");
    for stage in ["noise", "score", "report"] {
        assert!(html.contains(&format!("<td>{stage}</td>")), "a row for stage {stage}");
    }
    assert!(html.contains("24 values"), "the histogram counts every score");

    let Some(dom) = rendered_dom(&page) else {
        eprintln!("chromium is not installed here; skipping the browser check");
        return;
    };
    // The page's own check, run on load: every image decoded (the grid).
    assert!(dom.contains("data-images=\"1/1\""), "images did not all decode: {}", &dom[..dom.len().min(400)]);
    assert!(dom.contains("<svg"), "the histogram is in the page");
}
