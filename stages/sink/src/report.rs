//! `sink.report`: one self-contained HTML file a person can open in a browser: how each stage did
//! (rows, time, rows/s and its own figures, such as refine.iterate's pass rates), a grid of the
//! images, and a histogram of a score column. Images are embedded as data URIs, so the file can be
//! mailed or attached to a CI run as it is. It is written after every stage has finished, when
//! the run's figures are known, and only when the run succeeded.

use std::fmt::Write as _;
use std::path::PathBuf;

use arrow::array::{Array, Float64Array};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::report::RunReport;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
    write_atomic,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::grid::Cells;
use crate::raster::{Format, Layout, Range, Raster};

/// The `sink.report` plugin.
pub struct SinkReport;

/// Params of `sink.report`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// The HTML file, under the output folder. An `s3://`, `gs://` or `az://` URL is written
    /// locally under the output folder's `.pipe-remote/out/` first and uploaded whole once the
    /// run's figures are in it.
    #[serde(default = "default_path")]
    pub path: String,
    /// The page title (the pipeline's name by default).
    pub title: Option<String>,
    /// A tensor column of images to show as a grid.
    pub image: Option<String>,
    /// The axis order of the image tensor.
    #[serde(default)]
    pub layout: Layout,
    /// The value range of the image tensor.
    #[serde(default)]
    pub range: Range,
    /// Images per grid row.
    #[serde(default = "crate::grid::default_columns")]
    pub columns: u32,
    /// Integer upscaling of each image.
    #[serde(default = "default_scale")]
    pub scale: u32,
    /// A caption under each image; `{column}` placeholders take the row's values.
    pub caption: Option<String>,
    /// At most this many images are shown (the first ones).
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// A numeric column to draw a histogram of.
    pub score: Option<String>,
    /// Histogram bins.
    #[serde(default = "default_bins")]
    pub bins: usize,
}

fn default_path() -> String {
    "report.html".to_string()
}

fn default_scale() -> u32 {
    4
}

fn default_limit() -> usize {
    64
}

fn default_bins() -> usize {
    20
}

/// Scores kept for the histogram; past this, the histogram shows the first ones and says so.
const MAX_SCORES: usize = 1_000_000;

impl Plugin for SinkReport {
    fn name(&self) -> &'static str {
        "sink.report"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Writes one self-contained HTML page (images embedded) with each stage's rows, time and \
             rows/s, a grid of an image column and a histogram of a score column. Written after the \
             run, only when it succeeded; rows pass on unchanged. It needs every row, so it is \
             refused under `pipe run --shard`: `pipe merge` writes the shards' figures to run.json.",
        )
        .params::<ReportParams>()
        .reads("<image>", "tensor", "images for the grid (optional)")
        .reads("<score>", "numeric", "values for the histogram (optional)")
        .example("[[stage]]\nid = \"report\"\nuses = \"sink.report\"\nimage = \"sample\"\nrange = \"-1,1\"\nscore = \"score\"\ncaption = \"{label}\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        pipeline::shard::refuse_under_shard(
            cx,
            self.name(),
            "leave it out of the sharded pipeline: `pipe merge` writes the shards' figures to run.json, and an \
             unsharded run over the merged output (collect.table over the shards' table parts) can report on it",
        )?;
        let p: ReportParams = params.parse()?;
        let (path, upload) = pipeline::storage::sink_target(cx, "path", &p.path)?;
        for (key, value) in [("columns", p.columns), ("scale", p.scale)] {
            if value == 0 || value > 64 {
                return Err(Error::config(key, format!("{key} must be between 1 and 64")));
            }
        }
        if p.bins == 0 || p.bins > 1000 {
            return Err(Error::config("bins", "bins must be between 1 and 1000"));
        }
        let cells = Cells::new(p.caption.as_deref(), p.limit)?;
        let raster = match &p.image {
            Some(image) => {
                let field = pipeline::columns::require(input, "image", image, &[])?;
                Some(Raster::for_field("image", field, p.layout, p.range)?)
            }
            None => None,
        };
        if let Some(score) = &p.score {
            let field = pipeline::columns::require(input, "score", score, &[])?;
            if !field.data_type().is_numeric() {
                return Err(Error::config("score", format!("column `{score}` is {}, not a number", field.data_type())));
            }
        }
        cells.check(input)?;
        Ok(Stage::transform(ReportSink {
            cells,
            params: p,
            path,
            raster,
            scores: Vec::new(),
            scored: 0,
            seen: 0,
            schema: input.clone(),
            upload,
        }))
    }
}

struct ReportSink {
    params: ReportParams,
    /// The report's local file (staged when `path` is a URL).
    path: PathBuf,
    raster: Option<Raster>,
    cells: Cells,
    scores: Vec<f64>,
    /// Scores this run committed (each run commits at most MAX_SCORES).
    scored: u64,
    seen: u64,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    /// Where the report is uploaded once written, when `path` is a URL.
    upload: Option<pipeline::storage::Upload>,
}

impl Transform for ReportSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        // Images and scores are committed to the run journal as rows arrive and read back at the
        // end in canonical order, so a resumed run reports what an uninterrupted one does.
        let fresh = cx.journal().uncommitted(&batch)?;
        let ids = pipeline::columns::ids(&fresh)?;
        let mut parts = Vec::new();
        let cells = match &self.params.image {
            Some(image) => Some(self.cells.part(&fresh, image)?),
            None => None,
        };
        if let Some((part, part_ids)) = &cells {
            parts.push(("cells", part, part_ids));
        }
        let scores;
        if let Some(score) = &self.params.score {
            let values = arrow::compute::cast(pipeline::columns::column(&fresh, score)?, &DataType::Float64)?;
            let keep: arrow::array::BooleanArray = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .iter()
                .map(|v| Some(v.is_some_and(f64::is_finite) && (self.scored as usize) < MAX_SCORES))
                .collect();
            let kept = arrow::compute::filter_record_batch(&fresh, &keep)?;
            let values = arrow::compute::filter(&values, &keep)?;
            self.scored += values.len() as u64;
            let schema = Arc::new(Schema::new(vec![Field::new("score", DataType::Float64, true)]));
            scores = (RecordBatch::try_new(schema, vec![values])?, pipeline::columns::ids(&kept)?.clone());
            parts.push(("scores", &scores.0, &scores.1));
        }
        cx.journal().commit(ids, &parts)?;
        out.emit(batch)
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if let Some(raster) = &self.raster {
            self.cells.load(raster, cx)?;
        }
        self.seen = cx.journal().count() as u64;
        let scores = &mut self.scores;
        scores.clear();
        cx.journal().read("scores", 4096, |part| {
            let values = part.column(0).as_any().downcast_ref::<Float64Array>().expect("scores are Float64");
            let room = MAX_SCORES.saturating_sub(scores.len());
            scores.extend(values.iter().flatten().take(room));
            Ok(())
        })
    }

    fn after_run(&mut self, report: &RunReport) -> Result<()> {
        let html = self.render(report)?;
        write_atomic(&self.path, html.as_bytes())?;
        match &self.upload {
            Some(upload) => upload.remote.upload(&self.path, ""),
            None => Ok(()),
        }
    }
}

impl ReportSink {
    fn render(&self, report: &RunReport) -> Result<String> {
        let p = &self.params;
        let title = escape(p.title.as_deref().unwrap_or(&report.pipeline));
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
        );
        let rows_in = report.stages.first().map_or(0, |s| s.rows_out);
        let _ = writeln!(
            h,
            "<p class=\"summary\">Finished in {:.2} s &middot; seed {} &middot; {} rows from the first stage &middot; {} rejected</p>",
            report.seconds, report.seed, rows_in, report.rejected
        );
        h.push_str("<h2>Stages</h2>\n<table>\n<thead><tr><th>stage</th><th>plugin</th><th>rows in</th><th>rows out</th><th>rejected</th><th>filtered</th><th>busy s</th><th>rows/s</th><th>figures</th></tr></thead>\n<tbody>\n");
        for s in &report.stages {
            // A training's metric series are drawn below the table; here only their names.
            let figures: Vec<String> = s
                .extra
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_object()) {
                    ("metrics", Some(series)) => {
                        let names: Vec<&str> = series.keys().map(String::as_str).collect();
                        format!("metrics: {}", escape(&names.join(", ")))
                    }
                    _ => format!("{}: {}", escape(k), escape(&figure(v))),
                })
                .collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{}</td></tr>",
                escape(&s.id),
                escape(&s.uses),
                s.rows_in,
                s.rows_out,
                s.rejected,
                s.filtered,
                s.seconds,
                s.rows_per_second,
                figures.join("<br>")
            );
        }
        h.push_str("</tbody>\n</table>\n");
        for s in &report.stages {
            let Some(series) = s.extra.get("metrics").and_then(|m| m.as_object()) else { continue };
            if series.is_empty() {
                continue;
            }
            let _ = writeln!(h, "<h2>Training: {}</h2>", escape(&s.id));
            for (name, points) in series {
                let points: Vec<(f64, f64)> = points
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                let _ = writeln!(h, "<figure class=\"curve\"><figcaption>{}</figcaption>", escape(name));
                h.push_str(&curve(name, &points));
                h.push_str("</figure>\n");
            }
        }
        if let Some(raster) = &self.raster {
            let sheet = self.cells.compose(raster, p.columns, p.scale, 2).map_err(Error::msg)?;
            let png = sheet.encode(Format::Png, 90).map_err(Error::msg)?;
            let _ = writeln!(
                h,
                "<h2>Images</h2>\n<p>The first {} of {} rows.</p>\n<img class=\"grid\" alt=\"grid of {}\" width=\"{}\" height=\"{}\" src=\"data:image/png;base64,{}\">",
                self.cells.len(),
                self.seen,
                escape(p.image.as_deref().unwrap_or("")),
                sheet.width,
                sheet.height,
                base64(&png)
            );
        }
        if let Some(score) = &p.score {
            let _ = writeln!(h, "<h2>Distribution of <code>{}</code></h2>", escape(score));
            h.push_str(&histogram(&self.scores, p.bins));
            if self.scores.len() >= MAX_SCORES {
                let _ = writeln!(h, "<p>The first {MAX_SCORES} values are shown.</p>");
            }
        }
        h.push_str(CHECK_SCRIPT);
        h.push_str("</body>\n</html>\n");
        Ok(h)
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}td:nth-child(-n+2),th{text-align:left}\
img.grid{image-rendering:pixelated;border:1px solid #888}svg{background:#fafafa;border:1px solid #ccc}\
.summary{color:#555}";

/// Marks the page once it has loaded: how many of its images decoded, for a browser check.
const CHECK_SCRIPT: &str = "<script>\nwindow.addEventListener('load', function () {\n  var imgs = Array.prototype.slice.call(document.images);\n  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;\n  document.body.setAttribute('data-images', ok + '/' + imgs.length);\n});\n</script>\n";

/// A run.json figure as short text.
fn figure(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// An inline SVG line chart of a metric by step, with the step and value ranges on its axes.
fn curve(name: &str, points: &[(f64, f64)]) -> String {
    if points.is_empty() {
        return "<p>No values.</p>\n".to_string();
    }
    let (x0, x1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let (xs, ys) = (if x1 > x0 { x1 - x0 } else { 1.0 }, if y1 > y0 { y1 - y0 } else { 1.0 });
    let (w, hgt, left, bottom) = (600.0, 200.0, 60.0, 30.0);
    let at = |x: f64, y: f64| (left + (x - x0) / xs * (w - left - 10.0), 10.0 + (1.0 - (y - y0) / ys) * (hgt - 20.0));
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let (px, py) = at(*x, *y);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"{}\">\n",
        hgt + bottom,
        escape(name)
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{hgt}\" x2=\"{w}\" y2=\"{hgt}\" stroke=\"#999\"/><line x1=\"{left}\" y1=\"0\" x2=\"{left}\" y2=\"{hgt}\" stroke=\"#999\"/>"
    );
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#4a7ab8\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
        path.join(" "),
        escape(name)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"14\" font-size=\"12\" text-anchor=\"end\">{}</text>",
        left - 4.0,
        fmt_num(y1)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{hgt}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
        left - 4.0,
        fmt_num(y0)
    );
    let _ = writeln!(svg, "<text x=\"{left}\" y=\"{}\" font-size=\"12\">step {}</text>", hgt + 20.0, fmt_num(x0));
    let _ = writeln!(
        svg,
        "<text x=\"{w}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
        hgt + 20.0,
        fmt_num(x1)
    );
    svg.push_str("</svg>\n");
    let last = points.last().expect("not empty");
    let _ =
        writeln!(svg, "<p>{} points &middot; last {} at step {}</p>", points.len(), fmt_num(last.1), fmt_num(last.0));
    svg
}

/// An inline SVG histogram with axis labels, and the count, mean, min and max under it.
fn histogram(values: &[f64], bins: usize) -> String {
    if values.is_empty() {
        return "<p>No values.</p>\n".to_string();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if max > min { max - min } else { 1.0 };
    let mut counts = vec![0usize; bins];
    for v in values {
        let b = (((v - min) / span) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let (w, hgt, left, bottom) = (600.0, 200.0, 40.0, 30.0);
    let bar = (w - left) / bins as f64;
    let mut svg =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\">\n", hgt + bottom);
    for (i, c) in counts.iter().enumerate() {
        let bh = (*c as f64 / top as f64) * (hgt - 10.0);
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7ab8\"><title>{c}</title></rect>",
            left + i as f64 * bar + 1.0,
            hgt - bh,
            (bar - 2.0).max(1.0),
            bh
        );
    }
    let _ = writeln!(svg, "<text x=\"{left}\" y=\"{}\" font-size=\"12\">{}</text>", hgt + 20.0, fmt_num(min));
    let _ = writeln!(
        svg,
        "<text x=\"{w}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
        hgt + 20.0,
        fmt_num(max)
    );
    let _ = writeln!(svg, "<text x=\"2\" y=\"14\" font-size=\"12\">{top}</text>");
    svg.push_str("</svg>\n");
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let _ = writeln!(
        svg,
        "<p>{} values &middot; mean {} &middot; min {} &middot; max {}</p>",
        values.len(),
        fmt_num(mean),
        fmt_num(min),
        fmt_num(max)
    );
    svg
}

fn fmt_num(v: f64) -> String {
    format!("{v:.4}")
}

/// Text safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn histograms_count_every_value() {
        let svg = histogram(&[0.0, 0.5, 1.0, 1.0], 2);
        assert!(svg.contains("<title>1</title>") && svg.contains("<title>3</title>"), "{svg}");
        assert!(svg.contains("4 values"));
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }

    #[test]
    fn a_metric_series_becomes_a_curve_from_its_first_to_its_last_step() {
        let svg = curve("loss", &[(0.0, 2.0), (10.0, 1.0), (20.0, 0.5)]);
        let points = svg.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        let xy: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(xy.len(), 3);
        assert!(xy[0].0 < xy[1].0 && xy[1].0 < xy[2].0, "steps go right: {xy:?}");
        assert!(xy[0].1 < xy[2].1, "a falling loss goes down the chart: {xy:?}");
        assert!(svg.contains("3 points") && svg.contains("last 0.5000 at step 20.0000"), "{svg}");
        assert_eq!(curve("loss", &[]), "<p>No values.</p>\n");
    }
}
