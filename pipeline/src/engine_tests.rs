//! Unit tests of the planner and the runner on small in-crate plugins: a counting source, a
//! row-wise transform that draws from each row's stream, a filter (not row-wise), a collecting
//! sink, and a retry node whose judge passes rows on a given attempt.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rand::Rng;
use serde::Deserialize;

use crate::config::PipelineFile;
use crate::docs::{PluginDoc, PluginKind};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::plan::{Plan, PlanOptions};
use crate::plugin::{BuildContext, Plugin, Source, Stage, Transform};
use crate::registry::Registry;
use crate::retry::{Judge, Keep, Retry};
use crate::runner::{Emitter, RunOptions, StageContext};

#[derive(Deserialize, schemars::JsonSchema)]
struct CountParams {
    rows: usize,
}

/// `count`: rows `r0` ... with `n` = 0, 1, ...
struct Count;
struct CountSource(usize, SchemaRef);

impl Plugin for Count {
    fn name(&self) -> &'static str {
        "count"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Source
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Source, "rows")
    }
    fn build(&self, params: &Params, _: &SchemaRef, _: &BuildContext) -> Result<Stage> {
        let p: CountParams = params.parse()?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        Ok(Stage::source(CountSource(p.rows, schema)))
    }
}

impl Source for CountSource {
    fn schema(&self) -> SchemaRef {
        self.1.clone()
    }
    fn run(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        for start in (0..self.0).step_by(cx.batch_size()) {
            let end = (start + cx.batch_size()).min(self.0);
            let ids: ArrayRef = Arc::new(StringArray::from_iter_values((start..end).map(|i| format!("r{i}"))));
            let n: ArrayRef = Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64)));
            out.emit(RecordBatch::try_new(self.1.clone(), vec![ids, n])?)?;
        }
        Ok(())
    }
}

/// `draw`: adds `draw` (UInt64) from each row's stream and counts the rows it saw; row-wise.
struct Draw(Arc<AtomicUsize>);
struct DrawStage(SchemaRef, Arc<AtomicUsize>);

impl Plugin for Draw {
    fn name(&self) -> &'static str {
        "draw"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Transform, "draws")
    }
    fn build(&self, _: &Params, input: &SchemaRef, _: &BuildContext) -> Result<Stage> {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("draw", DataType::UInt64, false));
        Ok(Stage::transform(DrawStage(Arc::new(Schema::new(fields)), self.0.clone())))
    }
}

impl Transform for DrawStage {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn row_wise(&self) -> bool {
        true
    }
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.1.fetch_add(batch.num_rows(), Ordering::SeqCst);
        let ids = crate::columns::ids(&batch)?;
        let draws: ArrayRef = Arc::new(UInt64Array::from_iter_values(ids.iter().map(|id| {
            let id = id.unwrap_or_default();
            // Round k of a row draws k * 1000 + something, so a test can read the round back.
            u64::from(cx.round_of(id)) * 1000 + cx.rng(id).random_range(0..1000)
        })));
        let mut columns = batch.columns().to_vec();
        columns.push(draws);
        out.emit(RecordBatch::try_new(self.0.clone(), columns)?)
    }
}

/// `drop-odd`: a filter (not row-wise) that drops rows with odd `n`.
struct DropOdd;
struct DropOddStage(SchemaRef);

impl Plugin for DropOdd {
    fn name(&self) -> &'static str {
        "drop-odd"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Transform, "filters")
    }
    fn build(&self, _: &Params, input: &SchemaRef, _: &BuildContext) -> Result<Stage> {
        Ok(Stage::transform(DropOddStage(input.clone())))
    }
}

impl Transform for DropOddStage {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, _: &mut StageContext) -> Result<()> {
        let n = batch.column_by_name("n").expect("n").as_any().downcast_ref::<Int64Array>().expect("Int64").clone();
        let keep: arrow::array::BooleanArray = n.iter().map(|v| Some(v.unwrap_or(0) % 2 == 0)).collect();
        out.emit(arrow::compute::filter_record_batch(&batch, &keep)?)
    }
}

/// `collect`: a sink that keeps what it gets.
struct Collect(Arc<Mutex<Vec<RecordBatch>>>);
struct CollectStage(SchemaRef, Arc<Mutex<Vec<RecordBatch>>>);

impl Plugin for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Sink, "keeps")
    }
    fn build(&self, _: &Params, input: &SchemaRef, _: &BuildContext) -> Result<Stage> {
        Ok(Stage::transform(CollectStage(input.clone(), self.0.clone())))
    }
}

impl Transform for CollectStage {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, _: &mut StageContext) -> Result<()> {
        self.1.lock().unwrap().push(batch.clone());
        out.emit(batch)
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct RetryParams {
    stages: Vec<String>,
    max_rounds: u32,
    /// Row `n` passes on attempt (n % pass_mod) + 1.
    pass_mod: i64,
}

/// `retry`: passes row n on attempt n % pass_mod + 1 (read from `draw`'s round marker).
struct RetryPlugin;

struct ByRound(i64);

impl Judge for ByRound {
    fn judge(&self, batch: &RecordBatch) -> Result<Vec<(bool, f64)>> {
        let n = batch.column_by_name("n").expect("n").as_any().downcast_ref::<Int64Array>().expect("Int64").clone();
        let d =
            batch.column_by_name("draw").expect("draw").as_any().downcast_ref::<UInt64Array>().expect("u64").clone();
        Ok((0..batch.num_rows())
            .map(|i| {
                let round = (d.value(i) / 1000) as i64;
                (round >= n.value(i) % self.0, -(round as f64))
            })
            .collect())
    }
}

impl Plugin for RetryPlugin {
    fn name(&self) -> &'static str {
        "retry"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Transform, "retries")
    }
    fn retries(&self, params: &Params) -> Vec<String> {
        params.parse::<RetryParams>().map(|p| p.stages).unwrap_or_default()
    }
    fn build(&self, params: &Params, input: &SchemaRef, _: &BuildContext) -> Result<Stage> {
        let p: RetryParams = params.parse()?;
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("attempts", DataType::Int32, false));
        let schema = Arc::new(Schema::new(fields));
        Ok(Stage::Retry(Retry::new(p.stages, p.max_rounds, Keep::Last, schema, Box::new(ByRound(p.pass_mod)))))
    }
}

struct World {
    registry: Registry,
    draws: Arc<AtomicUsize>,
    sunk: Arc<Mutex<Vec<RecordBatch>>>,
}

fn world() -> World {
    let draws = Arc::new(AtomicUsize::new(0));
    let sunk = Arc::new(Mutex::new(Vec::new()));
    let registry = Registry::new().add(vec![
        Box::new(Count) as Box<dyn Plugin>,
        Box::new(Draw(draws.clone())),
        Box::new(DropOdd),
        Box::new(Collect(sunk.clone())),
        Box::new(RetryPlugin),
    ]);
    World { registry, draws, sunk }
}

fn plan(w: &World, dir: &Path, text: &str) -> Result<Plan> {
    let text = format!("[pipeline]\nname = \"t\"\nbatch_size = 4\noutput_dir = \"out\"\n\n{text}");
    let file = PipelineFile::parse(&dir.join("pipeline.toml"), dir.to_path_buf(), text, &[]).map_err(Error::from)?;
    Plan::build(file, &w.registry, &PlanOptions::default())
}

fn diagnostic(result: Result<Plan>) -> crate::diag::Diagnostic {
    match result {
        Err(Error::Invalid(d)) => *d,
        Err(other) => panic!("expected a diagnostic, got {other}"),
        Ok(_) => panic!("expected a diagnostic, the plan was built"),
    }
}

const LOOP: &str = "[[stage]]\nid = \"src\"\nuses = \"count\"\nrows = 10\n\n\
                    [[stage]]\nid = \"gen\"\nuses = \"draw\"\n\n\
                    [[stage]]\nid = \"again\"\nuses = \"retry\"\nstages = [\"gen\"]\nmax_rounds = 3\npass_mod = 4\n\n\
                    [[stage]]\nid = \"out\"\nuses = \"collect\"\n";

#[test]
fn the_planner_wires_default_inputs_and_learns_kinds_without_docs() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&w, dir.path(), LOOP).unwrap();
    let inputs: Vec<Option<usize>> = p.nodes.iter().map(|n| n.input).collect();
    assert_eq!(inputs, [None, Some(0), Some(1), Some(2)]);
    let kinds: Vec<PluginKind> = p.nodes.iter().map(|n| n.kind).collect();
    assert_eq!(kinds, [PluginKind::Source, PluginKind::Transform, PluginKind::Transform, PluginKind::Sink]);
    assert_eq!(p.loops.len(), 1);
    assert_eq!((p.loops[0].node, p.loops[0].span.clone()), (2, vec![1]));
    let names: Vec<&str> = p.nodes[2].schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "n", "draw", "attempts"]);
    // The graph shows the loop's way back.
    assert!(p.mermaid().contains("  s_again -. retry .-> s_gen\n"), "{}", p.mermaid());
    assert!(p.dot().contains("  \"again\" -> \"gen\" [style=dashed, label=\"retry\"];\n"), "{}", p.dot());
}

#[test]
fn a_source_given_an_input_is_located_at_the_input_key() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let d = diagnostic(plan(
        &w,
        dir.path(),
        "[[stage]]\nid = \"a\"\nuses = \"count\"\nrows = 1\n\n[[stage]]\nid = \"b\"\nuses = \"count\"\nrows = 1\ninput = \"a\"\n",
    ));
    assert_eq!(d.message, "stage \"b\" is a source (count) and takes no input");
    let at = d.location.expect("located");
    // Line 15 of the file: 5 lines of [pipeline] header and a blank line, then the stages.
    assert_eq!((at.line, at.column), (15, 9), "{}", at.line_text);
    assert_eq!(at.line_text, "input = \"a\"");
}

#[test]
fn a_cycle_is_a_diagnostic_naming_its_stages() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let d = diagnostic(plan(
        &w,
        dir.path(),
        "[[stage]]\nid = \"a\"\nuses = \"draw\"\ninput = \"b\"\n\n[[stage]]\nid = \"b\"\nuses = \"draw\"\ninput = \"a\"\n",
    ));
    assert!(d.message.starts_with("stages form a cycle: "), "{}", d.message);
    assert!(d.message.contains("a -> b") || d.message.contains("b -> a"), "{}", d.message);
    assert!(d.location.is_some());
}

#[test]
fn a_span_stage_that_is_not_row_wise_is_refused_at_its_stages_key() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let text = LOOP.replace("uses = \"draw\"", "uses = \"drop-odd\"");
    let d = diagnostic(plan(&w, dir.path(), &text));
    assert!(d.message.starts_with("stage \"again\": stage \"gen\" (drop-odd) is not row-wise"), "{}", d.message);
    let at = d.location.expect("located");
    assert_eq!(at.line_text, "stages = [\"gen\"]");
    assert_eq!((at.line, at.column), (18, 10));
}

#[test]
fn a_span_that_does_not_end_at_the_input_is_refused() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let text = LOOP.replace("stages = [\"gen\"]", "stages = [\"src\"]");
    let d = diagnostic(plan(&w, dir.path(), &text));
    assert_eq!(d.message, "stage \"again\": the span must end with the stage feeding this one (\"gen\"), not \"src\"");
}

#[test]
fn the_runner_retries_rows_through_the_same_instance_with_their_next_round() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&w, dir.path(), LOOP).unwrap();
    let report =
        crate::runner::run(p, RunOptions { progress: crate::progress::ProgressMode::Off, fresh: false, shard: None })
            .unwrap();
    // Row n passes on attempt n % 4 + 1, at most 3 attempts: rows 0..10 take 1,2,3,3,1,2,3,3,1,2.
    let expected = [1, 2, 3, 3, 1, 2, 3, 3, 1, 2];
    let sunk = w.sunk.lock().unwrap();
    let batch = arrow::compute::concat_batches(&sunk[0].schema(), sunk.iter()).unwrap();
    let ids: Vec<&str> = crate::columns::ids(&batch).unwrap().iter().map(|i| i.unwrap()).collect();
    assert_eq!(ids, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>(), "rows leave in arrival order");
    let attempts = batch.column_by_name("attempts").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
    assert_eq!(attempts.values().to_vec(), expected);
    // The kept (last) attempt of each row was drawn in round attempts - 1.
    let draws = batch.column_by_name("draw").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
    for (i, a) in expected.iter().enumerate() {
        assert_eq!(draws.value(i) / 1000, *a as u64 - 1, "row {i}");
    }
    // One instance saw every attempt: 10 first tries and 11 retries.
    assert_eq!(w.draws.load(Ordering::SeqCst), 10 + expected.iter().map(|a| a - 1).sum::<i32>() as usize);
    let again = &report.stages[2];
    assert_eq!(again.extra["passed_first_try"], 3);
    // Rows 3 and 7 would pass on attempt 4.
    assert_eq!(again.extra["never_passed"], 2);
    assert_eq!(again.extra["passed_after_retries"], 5);
    assert_eq!(again.extra["rows_rerun"], 11);
    // The span stage's own figures count each row once, as they did before retries were a node.
    assert_eq!(report.stages[1].rows_in, 10);
    assert_eq!(report.stages[1].rows_out, 10);
    assert_eq!(again.rows_in, 10);
}

#[derive(Deserialize, schemars::JsonSchema)]
struct MakeParams {
    text: String,
}

/// `make`: a sink that, at its end, writes `f.txt` (its `text` and the rows it saw) and publishes it.
struct Make;
struct MakeStage(SchemaRef, String, usize, std::path::PathBuf);

impl Plugin for Make {
    fn name(&self) -> &'static str {
        "make"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Sink, "makes f.txt")
    }
    fn artifacts(&self, _: &Params) -> Vec<String> {
        vec!["f.txt".into()]
    }
    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: MakeParams = params.parse()?;
        Ok(Stage::transform(MakeStage(input.clone(), p.text, 0, cx.output_dir.join("made"))))
    }
}

impl Transform for MakeStage {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn process(&mut self, batch: RecordBatch, _: &mut Emitter, _: &mut StageContext) -> Result<()> {
        // Slow enough that a stage not waiting for the file would see it missing.
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.2 += batch.num_rows();
        Ok(())
    }
    fn finish(&mut self, _: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        std::fs::create_dir_all(&self.3).map_err(|e| Error::io(&self.3, e))?;
        let f = self.3.join("f.txt");
        std::fs::write(&f, format!("{} {}", self.1, self.2)).map_err(|e| Error::io(&f, e))?;
        cx.publish(&self.3);
        Ok(())
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct ReadParams {
    path: String,
}

/// `read`: reads a file when built and adds its text as column `text`.
struct Read;
struct ReadStage(SchemaRef, String);

impl Plugin for Read {
    fn name(&self) -> &'static str {
        "read"
    }
    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }
    fn doc(&self) -> PluginDoc {
        PluginDoc::new(PluginKind::Transform, "reads a file")
    }
    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: ReadParams = params.parse()?;
        let path = cx.resolve(&p.path);
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::config("path", format!("{}: {e}", path.display())))?;
        let schema = crate::columns::with_outputs(input, vec![Field::new("text", DataType::Utf8, false)]);
        Ok(Stage::transform(ReadStage(schema, text)))
    }
}

impl Transform for ReadStage {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, _: &mut StageContext) -> Result<()> {
        let text: ArrayRef = Arc::new(StringArray::from(vec![self.1.as_str(); batch.num_rows()]));
        out.emit(crate::columns::assemble(&self.0, &batch, vec![text])?)
    }
}

fn artifact_world() -> World {
    let mut w = world();
    w.registry = w.registry.add(vec![Box::new(Make) as Box<dyn Plugin>, Box::new(Read)]);
    w
}

const ARTIFACTS: &str = "[[stage]]\nid = \"data\"\nuses = \"count\"\nrows = 10\n\n\
                         [[stage]]\nid = \"fit\"\nuses = \"make\"\ntext = \"trained on\"\n\n\
                         [[stage]]\nid = \"prompts\"\nuses = \"count\"\nrows = 3\n\n\
                         [[stage]]\nid = \"use\"\nuses = \"read\"\npath = \"@fit/f.txt\"\n\n\
                         [[stage]]\nid = \"out\"\nuses = \"collect\"\n";

#[test]
fn a_stage_naming_an_artifact_is_built_once_its_maker_has_published() {
    let w = artifact_world();
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&w, dir.path(), ARTIFACTS).unwrap();
    assert!(p.nodes[3].pending.is_some() && p.nodes[4].pending.is_some(), "use and its consumer wait");
    assert_eq!(p.nodes[3].uses_artifacts_of, ["fit"]);
    assert!(p.mermaid().contains("  s_fit -. artifacts .-> s_use\n"), "{}", p.mermaid());
    crate::runner::run(p, RunOptions { progress: crate::progress::ProgressMode::Off, fresh: false, shard: None })
        .unwrap();
    let sunk = w.sunk.lock().unwrap();
    let batch = arrow::compute::concat_batches(&sunk[0].schema(), sunk.iter()).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let text = batch.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(text.value(0), "trained on 10", "built after every row reached the maker");
}

#[test]
fn validate_says_the_check_waits_and_refuses_unknown_artifacts_and_shared_sources() {
    let w = artifact_world();
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[pipeline]\nname = \"t\"\nbatch_size = 4\n\n{ARTIFACTS}");
    let file = PipelineFile::parse(&dir.path().join("p.toml"), dir.path().to_path_buf(), text, &[]).unwrap();
    let p = Plan::build(file, &w.registry, &PlanOptions { validate_only: true, ..PlanOptions::default() }).unwrap();
    assert!(
        p.warnings.iter().any(|m| m.starts_with("stage \"use\": checked when the run builds it")),
        "{:?}",
        p.warnings
    );

    let d = diagnostic(plan(&w, dir.path(), &ARTIFACTS.replace("@fit/f.txt", "@fit/g.txt")));
    assert_eq!(d.message, "stage \"use\": stage \"fit\" does not make `g.txt`");
    assert_eq!(d.location.unwrap().line_text, "path = \"@fit/g.txt\"");
    let d = diagnostic(plan(&w, dir.path(), &ARTIFACTS.replace("@fit/f.txt", "@prompts/f.txt")));
    assert!(d.message.contains("names stage \"prompts\", which makes no artifacts"), "{}", d.message);
    // Fed by the source the maker reads: it would hold rows the maker needs.
    let shared = ARTIFACTS.replace("path = \"@fit/f.txt\"", "path = \"@fit/f.txt\"\ninput = \"data\"");
    let d = diagnostic(plan(&w, dir.path(), &shared));
    assert!(d.message.contains("reads from \"data\", which feeds \"fit\" too"), "{}", d.message);
}

/// A retry loop over stages built after training: the span is wired at plan time from the retry
/// node's params and checked as its stages are built.
#[test]
fn a_retry_loop_may_span_stages_built_from_artifacts() {
    let w = artifact_world();
    let dir = tempfile::tempdir().unwrap();
    let text = "[[stage]]\nid = \"data\"\nuses = \"count\"\nrows = 4\n\n\
                [[stage]]\nid = \"fit\"\nuses = \"make\"\ntext = \"trained on\"\n\n\
                [[stage]]\nid = \"prompts\"\nuses = \"count\"\nrows = 10\n\n\
                [[stage]]\nid = \"use\"\nuses = \"read\"\npath = \"@fit/f.txt\"\n\n\
                [[stage]]\nid = \"gen\"\nuses = \"draw\"\n\n\
                [[stage]]\nid = \"again\"\nuses = \"retry\"\nstages = [\"use\", \"gen\"]\nmax_rounds = 3\npass_mod = 4\n\n\
                [[stage]]\nid = \"out\"\nuses = \"collect\"\n";
    let p = plan(&w, dir.path(), text).unwrap();
    assert_eq!(p.loops.len(), 1);
    assert_eq!(p.loops[0].span, [3, 4]);
    assert!(p.loops[0].span_input.is_some(), "the head is fed by a source built now");
    let report =
        crate::runner::run(p, RunOptions { progress: crate::progress::ProgressMode::Off, fresh: false, shard: None })
            .unwrap();
    let sunk = w.sunk.lock().unwrap();
    let batch = arrow::compute::concat_batches(&sunk[0].schema(), sunk.iter()).unwrap();
    let attempts = batch.column_by_name("attempts").unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
    assert_eq!(attempts.values().to_vec(), [1, 2, 3, 3, 1, 2, 3, 3, 1, 2]);
    let text = batch.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(text.value(0), "trained on 4");
    assert_eq!(report.stages[5].extra["rows_rerun"], 11);
}
