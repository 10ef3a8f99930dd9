//! From a parsed pipeline file to a checked plan: plugins resolved, inputs wired (default: the
//! previous stage), cycles refused, every stage built and every schema known — all before any data
//! is read. `pipe validate` stops here; `pipe run` goes on to the runner.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};

use crate::config::{OnError, PipelineFile, StageConfig};
use crate::diag::{Diagnostic, closest};
use crate::docs::PluginKind;
use crate::error::{Error, Result};
use crate::plugin::{BuildContext, Stage};
use crate::registry::Registry;
use crate::rowcache::{CachedStage, CutOff, CutOffStage, RowCache, StageKeyParts};
use crate::source::Sources;

/// A built stage with its input and output schemas.
type Built = (Stage, SchemaRef, SchemaRef);

/// How to build a plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--output-dir`, overriding `[pipeline] output_dir`.
    pub output_dir: Option<PathBuf>,
    /// Building for `pipe validate` (or `graph`): nothing will run.
    pub validate_only: bool,
    /// `--no-cache`: stages do not reuse cached results.
    pub no_cache: bool,
    /// `--shard I/N`: the shard this run processes, given to every stage's build.
    pub shard: Option<crate::plugin::Shard>,
}

/// One built stage with its place in the graph and its schemas.
pub struct PlanNode {
    /// Stage id.
    pub id: String,
    /// Plugin name.
    pub uses: String,
    /// Source, transform or sink.
    pub kind: PluginKind,
    /// Index of the upstream node.
    pub input: Option<usize>,
    /// Effective on_error.
    pub on_error: OnError,
    /// The stage itself.
    pub stage: Stage,
    /// The schema it receives (empty for sources).
    pub input_schema: SchemaRef,
    /// The schema it emits (empty while the stage waits to be built).
    pub schema: SchemaRef,
    /// For a stage that names another stage's artifacts (or is fed by one that does): how to
    /// build it once they exist. Its `stage` is a placeholder until then.
    pub pending: Option<Pending>,
    /// The stages whose artifacts it names (`"@STAGE/FILE"`).
    pub uses_artifacts_of: Vec<String>,
}

/// A stage built during the run, once the artifacts it names exist and its input's schema is known.
pub struct Pending {
    pub(crate) plugin: Arc<dyn crate::plugin::Plugin>,
    pub(crate) config: StageConfig,
    /// The stages whose artifacts it names.
    pub(crate) producers: Vec<String>,
    pub(crate) cx: BuildContext,
    /// What its per-row cache key needs besides its own params.
    pub(crate) site: CacheSite,
}

impl Pending {
    /// The stages whose artifacts it waits for.
    pub fn producers(&self) -> &[String] {
        &self.producers
    }

    /// Builds the stage for `input`, with every `"@STAGE/FILE"` naming a file in `folders[STAGE]`.
    pub(crate) fn build(&self, input: &SchemaRef, folders: &HashMap<String, PathBuf>) -> Result<(Stage, Vec<String>)> {
        let params = self.config.params.map_strings(&|s| {
            let (stage, file) = artifact_ref(s)?;
            folders.get(stage).map(|dir| dir.join(file).to_string_lossy().into_owned())
        });
        let stage = self.plugin.build(&params, input, &self.cx).map_err(|e| locate(&self.config, e))?;
        let stage = self.site.wrap(stage, self.plugin.as_ref(), &self.config, &params, &self.cx);
        Ok((stage, self.cx.take_warnings()))
    }
}

/// What a stage's per-row cache key needs from the rest of the pipeline.
#[derive(Clone)]
pub(crate) struct CacheSite {
    /// The plugin and params of each stage upstream, nearest first.
    upstream: Vec<String>,
    /// The stage's effective on_error.
    on_error: OnError,
    /// Folders never hashed as a param's files (the output and cache folders).
    skip: Vec<PathBuf>,
    /// The early cut-off the stage belongs to, and its place in it.
    cut: Option<(Arc<CutOff>, CutRole)>,
}

/// A stage's place in an early cut-off.
#[derive(Clone)]
enum CutRole {
    /// The source, when the chain's start is its one consumer: asked to leave contents unread
    /// ([`crate::plugin::Source::defer`]) for the probe to read only the rows it cannot answer.
    Root,
    /// The first stage after the source: it looks rows up.
    Probe,
    /// A later stage of the chain.
    Chain,
    /// The cached model stage, with the columns its consumers read.
    Tail(Vec<String>),
}

impl CacheSite {
    /// `stage` answered from the per-row cache, when its plugin asks for that, it is row-wise,
    /// and the run will run (not under `pipe validate`).
    fn wrap(
        &self,
        stage: Stage,
        plugin: &dyn crate::plugin::Plugin,
        config: &StageConfig,
        params: &crate::params::Params,
        cx: &BuildContext,
    ) -> Stage {
        let mode = plugin.row_cache(params);
        let files = || -> Vec<(String, String)> {
            params
                .strings()
                .into_iter()
                .filter(|(_, value)| !value.is_empty() && crate::plugin::url_scheme(value).is_none())
                .filter_map(|(key, value)| crate::journal::hash_path(&cx.resolve(&value), &self.skip).map(|h| (key, h)))
                .collect()
        };
        // (None under `pipe validate`: the planner makes no cut-off there.)
        let cut = self.cut.as_ref();
        if let Some((cut, CutRole::Root)) = cut {
            let mut stage = stage;
            // (With --no-cache every row is read anyway: the source reads them as before.)
            if let Stage::Source(source) = &mut stage
                && !cx.no_cache
                && let Some(loader) = source.defer()
            {
                cut.defer_to(loader);
            }
            return stage;
        }
        if let Some((cut, role @ (CutRole::Probe | CutRole::Chain))) = cut {
            return match stage {
                Stage::Transform(t) => {
                    cut.add_files(files().into_iter().map(|(k, h)| (format!("{} {k}", config.id), h)).collect());
                    Stage::Transform(Box::new(CutOffStage::new(t, cut.clone(), matches!(role, CutRole::Probe))))
                }
                other => {
                    cut.break_off();
                    other
                }
            };
        }
        let inner = match stage {
            Stage::Transform(t) if mode != RowCache::Off && !cx.validate_only && t.row_wise() => t,
            other => {
                if let Some((cut, _)) = cut {
                    cut.break_off();
                }
                return other;
            }
        };
        let files = files();
        let parts = StageKeyParts {
            id: &config.id,
            uses: &config.uses,
            params: params_json(params),
            on_error: format!("{:?} {:?}", self.on_error, cx.runtime),
            files,
            upstream: self.upstream.clone(),
            seed: (mode == RowCache::Seeded).then_some(cx.seed),
            columns: inner
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let meta = serde_json::json!({
            "pipeline": cx.pipeline_name,
            "stage": config.id,
            "uses": config.uses,
            "made_by": format!("pipe {}", env!("CARGO_PKG_VERSION")),
        });
        let mut cached = CachedStage::new(inner, &cx.cache_dir, parts.key(), !cx.no_cache, meta.clone());
        if let Some((cut, CutRole::Tail(needs))) = cut {
            cached.end_cut_off(cut.clone(), &cx.cache_dir, needs.clone(), meta);
        }
        Stage::Transform(Box::new(cached))
    }
}

/// The stages as the planner sees them before building any: what the row cache's planning
/// ([`Graph::read_after`], [`Graph::cut_offs`]) works from.
struct Graph<'a> {
    configs: &'a [StageConfig],
    plugins: &'a [Arc<dyn crate::plugin::Plugin>],
    kinds: &'a [PluginKind],
    inputs: &'a [Option<usize>],
    retried: &'a HashSet<String>,
    refs: &'a [Vec<String>],
}

impl Graph<'_> {
    /// The stages taking stage `i`'s rows.
    fn consumers(&self, i: usize) -> Vec<usize> {
        (0..self.configs.len()).filter(|&j| self.inputs[j] == Some(i)).collect()
    }

    /// Whether stage `i` is outside every retry loop and waits for no artifacts (its rows meet
    /// only its consumers).
    fn plain(&self, i: usize) -> bool {
        let config = &self.configs[i];
        !self.retried.contains(&config.id)
            && self.refs[i].is_empty()
            && self.plugins[i].retries(&config.params).is_empty()
    }

    /// The columns of stage `i`'s output read after it, when every stage taking it is a sink
    /// that names them; `None` when any may be read: a consumer that is not such a sink, no
    /// consumer at all, or a stage that is not [`plain`](Self::plain).
    fn read_after(&self, i: usize) -> Option<Vec<String>> {
        let consumers = self.consumers(i);
        if !self.plain(i) || consumers.is_empty() {
            return None;
        }
        let mut read = vec!["id".to_string()];
        for c in consumers {
            if self.kinds[c] != PluginKind::Sink {
                return None;
            }
            for col in self.plugins[c].reads_only(&self.configs[c].params)? {
                if !read.contains(&col) {
                    read.push(col);
                }
            }
        }
        Some(read)
    }

    /// The early cut-offs of the row cache: for each cached model stage whose consumers are
    /// sinks that name the columns they read (`read_after`, from [`read_after`](Self::read_after)),
    /// fed through a chain of pure stages (each with that one consumer) by a source whose ids are
    /// unique, the chain's stages and the model stage share one [`CutOff`]. Stages inside a retry
    /// loop or waiting for artifacts take no part.
    fn cut_offs(&self, read_after: &[Option<Vec<String>>]) -> Vec<Option<(Arc<CutOff>, CutRole)>> {
        let (configs, plugins, kinds, inputs) = (self.configs, self.plugins, self.kinds, self.inputs);
        let mut out: Vec<Option<(Arc<CutOff>, CutRole)>> = vec![None; configs.len()];
        for m in 0..configs.len() {
            if kinds[m] != PluginKind::Transform || plugins[m].row_cache(&configs[m].params) == RowCache::Off {
                continue;
            }
            let Some(needs) = read_after[m].clone() else { continue };
            let mut chain = Vec::new();
            let mut at = inputs[m];
            let source = loop {
                let Some(u) = at else { break None };
                if kinds[u] == PluginKind::Source {
                    break Some(u);
                }
                if !(plugins[u].pure(&configs[u].params)
                    && self.plain(u)
                    && self.consumers(u).len() == 1
                    && out[u].is_none())
                {
                    break None;
                }
                chain.push(u);
                at = inputs[u];
            };
            let Some(source) = source else { continue };
            if chain.is_empty() || !plugins[source].unique_ids(&configs[source].params) {
                continue;
            }
            let cut = CutOff::new();
            let first = *chain.last().expect("a chain");
            for &u in &chain {
                out[u] = Some((cut.clone(), if u == first { CutRole::Probe } else { CutRole::Chain }));
            }
            if self.consumers(source).len() == 1 && out[source].is_none() {
                out[source] = Some((cut.clone(), CutRole::Root));
            }
            out[m] = Some((cut, CutRole::Tail(needs)));
        }
        out
    }
}

/// A stage's params as JSON text, for keys and fingerprints.
pub(crate) fn params_json(params: &crate::params::Params) -> String {
    params.parse::<serde_json::Value>().map(|v| v.to_string()).unwrap_or_default()
}

/// `"@STAGE/FILE"` as (STAGE, FILE).
fn artifact_ref(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('@')?;
    let (stage, file) = rest.split_once('/')?;
    (!stage.is_empty() && !file.is_empty()).then_some((stage, file))
}

/// Stands in for a stage not built yet; never run.
struct Unbuilt(SchemaRef);

impl crate::plugin::Transform for Unbuilt {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }

    fn process(
        &mut self,
        _: arrow::record_batch::RecordBatch,
        _: &mut crate::runner::Emitter,
        _: &mut crate::runner::StageContext,
    ) -> Result<()> {
        Err(Error::msg("a stage ran before it was built (a bug in pipe)"))
    }
}

/// A retry node and the span it re-runs.
#[derive(Debug, Clone)]
pub struct LoopPlan {
    /// The retry node.
    pub node: usize,
    /// The span's nodes, in order; the first is the loop's head.
    pub span: Vec<usize>,
    /// The schema the head receives: a retry is made of these columns. `None` when the head is
    /// built during the run (after training); the runner takes it from the stage feeding the head.
    pub span_input: Option<SchemaRef>,
    /// The stage feeding the head.
    pub span_input_from: Option<String>,
}

/// A checked pipeline, ready to run.
pub struct Plan {
    /// The parsed file.
    pub file: PipelineFile,
    /// Where outputs go.
    pub output_dir: PathBuf,
    /// Nodes in file order.
    pub nodes: Vec<PlanNode>,
    /// The retry loops: spans of nodes re-run by a retry node.
    pub loops: Vec<LoopPlan>,
    /// Warnings from building (a folder that does not exist yet, say).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Resolves, builds and type-checks every stage. Errors are located diagnostics (exit 2).
    pub fn build(file: PipelineFile, registry: &Registry, options: &PlanOptions) -> Result<Plan> {
        let output_dir = match &options.output_dir {
            Some(dir) => dir.clone(),
            None => file.resolve(&file.settings.output_dir),
        };
        let sources = file.sources.clone();
        check_output_dir(&file, &output_dir, options.output_dir.is_some()).map_err(Error::from)?;
        let configs = &file.stages;
        if configs.is_empty() {
            let d = sources.error(0..0, "the pipeline has no stages").hint("add a [[stage]] table with id and uses");
            return Err(d.into());
        }

        let mut plugins = Vec::with_capacity(configs.len());
        for config in configs {
            let plugin = registry.get(&config.uses).ok_or_else(|| {
                let hint = match closest(&config.uses, registry.names()) {
                    Some(best) => format!("did you mean \"{best}\"?"),
                    None => "`pipe plugins` lists the plugins this binary knows".to_string(),
                };
                sources.error(config.uses_span.clone(), format!("unknown plugin \"{}\"", config.uses)).hint(hint)
            })?;
            plugins.push(plugin.clone());
        }

        let kinds: Vec<PluginKind> = plugins.iter().map(|p| p.kind()).collect();
        // Stages a retry node re-runs are told so when they are built.
        let retried: HashSet<String> = configs.iter().zip(&plugins).flat_map(|(c, p)| p.retries(&c.params)).collect();
        let index: HashMap<&str, usize> = configs.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
        let mut inputs = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let input = match (&config.input, kinds[i]) {
                (Some(input), PluginKind::Source) => {
                    return Err(sources
                        .error(
                            input.span(),
                            format!("stage \"{}\" is a source ({}) and takes no input", config.id, config.uses),
                        )
                        .hint("remove `input`")
                        .into());
                }
                (Some(input), _) => Some(*index.get(input.get_ref().as_str()).ok_or_else(|| {
                    let hint = match closest(input.get_ref(), configs.iter().map(|c| c.id.as_str())) {
                        Some(best) => format!("did you mean \"{best}\"?"),
                        None => format!(
                            "stage ids: {}",
                            configs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    sources.error(input.span(), format!("input \"{}\" names no stage", input.get_ref())).hint(hint)
                })?),
                (None, PluginKind::Source) => None,
                (None, _) if i == 0 => {
                    return Err(sources
                        .error(
                            config.uses_span.clone(),
                            format!("stage \"{}\" needs an input, and no stage comes before it", config.id),
                        )
                        .hint("start the pipeline with a source stage such as collect.files")
                        .into());
                }
                (None, _) => Some(i - 1),
            };
            inputs.push(input);
        }
        let order = topological_order(&sources, configs, &inputs).map_err(|d| Error::from(*d))?;

        // Stages that publish artifacts, and the stages that name them.
        let produced: HashMap<&str, Vec<String>> = configs
            .iter()
            .zip(&plugins)
            .map(|(c, p)| (c.id.as_str(), p.artifacts(&c.params)))
            .filter(|(_, files)| !files.is_empty())
            .collect();
        let mut refs: Vec<Vec<String>> = Vec::with_capacity(configs.len());
        for config in configs {
            let mut producers = Vec::new();
            for (key, value) in config.params.strings() {
                let Some((stage, name)) = artifact_ref(&value) else { continue };
                if !index.contains_key(stage) {
                    continue;
                }
                let Some(files) = produced.get(stage) else {
                    let d = config.params.diagnostic(
                        Some(&key),
                        &format!("\"{value}\" names stage \"{stage}\", which makes no artifacts"),
                        Some("artifacts come from a train stage's `outputs`".into()),
                    );
                    return Err(d.into());
                };
                if !files.iter().any(|f| f == name) {
                    let d = config.params.diagnostic(
                        Some(&key),
                        &format!("stage \"{stage}\" does not make `{name}`"),
                        Some(format!("its outputs: {}", files.join(", "))),
                    );
                    return Err(d.into());
                }
                if stage == config.id {
                    let d = config.params.diagnostic(Some(&key), "a stage cannot use its own artifacts", None);
                    return Err(d.into());
                }
                if !producers.iter().any(|p| p == stage) {
                    producers.push(stage.to_string());
                }
            }
            refs.push(producers);
        }
        let cache_dir = crate::cache::Cache::folder(&file.dir, &file.settings.cache_dir);
        let cache = crate::cache::Cache::new(cache_dir.clone());
        let mut pending: Vec<Option<Pending>> = (0..configs.len()).map(|_| None).collect();
        let graph =
            Graph { configs, plugins: &plugins, kinds: &kinds, inputs: &inputs, retried: &retried, refs: &refs };
        let read_after: Vec<Option<Vec<String>>> = (0..configs.len()).map(|i| graph.read_after(i)).collect();
        let cut_offs = match options.validate_only {
            true => vec![None; configs.len()],
            false => graph.cut_offs(&read_after),
        };

        let context = |i: usize| {
            let config = &configs[i];
            let mut cx = BuildContext::new(&config.id, &file.dir, &output_dir);
            cx.seed = file.settings.seed;
            cx.batch_size = file.settings.batch_size;
            cx.runtime = file.runtime.clone();
            cx.validate_only = options.validate_only;
            cx.input = inputs[i].map(|up| configs[up].id.clone());
            cx.retried = retried.contains(&config.id);
            cx.pipeline_name = file.settings.name.clone();
            cx.cache_dir = cache_dir.clone();
            cx.no_cache = options.no_cache;
            cx.shard = options.shard;
            cx.read_after = read_after[i].clone();
            cx
        };
        let site = |i: usize| {
            let mut upstream = Vec::new();
            let mut at = inputs[i];
            while let Some(up) = at {
                upstream.push(format!("{} {}", configs[up].uses, params_json(&configs[up].params)));
                at = inputs[up];
            }
            CacheSite {
                upstream,
                on_error: configs[i].on_error.unwrap_or(file.settings.on_error),
                skip: vec![output_dir.clone(), cache_dir.clone()],
                cut: cut_offs[i].clone(),
            }
        };
        // Slow work that needs no input schema (a plugin process starting) begins for every
        // stage now, and overlaps with the builds before it.
        for &i in order.iter().filter(|&&i| refs[i].is_empty()) {
            plugins[i].prepare(&configs[i].params, &context(i));
        }

        let mut built: Vec<Option<Built>> = (0..configs.len()).map(|_| None).collect();
        let mut warnings = Vec::new();
        for &i in &order {
            let config = &configs[i];
            let cx = context(i);
            let input_schema = match inputs[i] {
                Some(up) => built[up].as_ref().expect("topological order").2.clone(),
                None => Arc::new(Schema::empty()),
            };
            let fed_by_pending = inputs[i].is_some_and(|up| pending[up].is_some());
            if !refs[i].is_empty() || fed_by_pending {
                // Under `pipe validate`, the artifacts the cache holds from the last training check
                // the stage now; otherwise it is built once training has published them.
                let cached: Option<HashMap<String, PathBuf>> = refs[i]
                    .iter()
                    .map(|p| cache.latest("train", &file.settings.name, p).map(|dir| (p.clone(), dir)))
                    .collect();
                match cached.filter(|_| options.validate_only && !fed_by_pending) {
                    Some(folders) => {
                        let p = Pending {
                            plugin: plugins[i].clone(),
                            config: config.clone(),
                            producers: refs[i].clone(),
                            cx,
                            site: site(i),
                        };
                        let (stage, stage_warnings) = p.build(&input_schema, &folders)?;
                        warnings.extend(stage_warnings.into_iter().map(|w| format!("stage \"{}\": {w}", config.id)));
                        let schema = stage.schema();
                        built[i] = Some((stage, input_schema, schema));
                    }
                    None => {
                        if options.validate_only {
                            let waits = if refs[i].is_empty() {
                                format!("its input \"{}\" is", configs[inputs[i].expect("fed")].id)
                            } else {
                                format!("the artifacts of \"{}\" are", refs[i].join("\", \""))
                            };
                            warnings.push(format!(
                                "stage \"{}\": checked when the run builds it, once {waits} ready (the cache holds no \
                                 earlier training)",
                                config.id
                            ));
                        }
                        let empty: SchemaRef = Arc::new(Schema::empty());
                        let mut producers = refs[i].clone();
                        if let Some(up) = inputs[i].filter(|up| pending[*up].is_some()) {
                            for p in &pending[up].as_ref().expect("pending").producers {
                                if !producers.contains(p) {
                                    producers.push(p.clone());
                                }
                            }
                        }
                        pending[i] = Some(Pending {
                            plugin: plugins[i].clone(),
                            config: config.clone(),
                            producers,
                            cx,
                            site: site(i),
                        });
                        built[i] = Some((Stage::Transform(Box::new(Unbuilt(empty.clone()))), input_schema, empty));
                    }
                }
                continue;
            }
            let started = std::time::Instant::now();
            let stage = plugins[i].build(&config.params, &input_schema, &cx).map_err(|e| locate(config, e))?;
            let stage = site(i).wrap(stage, plugins[i].as_ref(), config, &config.params, &cx);
            tracing::debug!(stage = %config.id, uses = %config.uses, ms = started.elapsed().as_secs_f64() * 1e3, "built");
            let fits = match (&stage, kinds[i]) {
                (Stage::Source(_), PluginKind::Source) => true,
                (Stage::Source(_), _) | (_, PluginKind::Source) => false,
                _ => true,
            };
            if !fits {
                return Err(Error::msg(format!(
                    "plugin {} is a {} but built a {} stage (a bug in the plugin)",
                    config.uses,
                    kinds[i].as_str(),
                    stage.kind_word()
                )));
            }
            let schema = stage.schema();
            match schema.field_with_name("id") {
                Ok(f) if f.data_type() == &DataType::Utf8 => {}
                _ => {
                    let d = config.params.diagnostic(
                        None,
                        "its output has no Utf8 column `id`",
                        Some("every row must keep its string id".into()),
                    );
                    return Err(d.into());
                }
            }
            warnings.extend(cx.take_warnings().into_iter().map(|w| format!("stage \"{}\": {w}", config.id)));
            built[i] = Some((stage, input_schema, schema));
        }
        check_waits(configs, &inputs, &pending)?;
        let loops = plan_loops(configs, &plugins, &kinds, &inputs, &built, &pending)?;

        let nodes = configs
            .iter()
            .zip(built)
            .zip(pending)
            .zip(refs)
            .enumerate()
            .map(|(i, (((config, b), pending), uses_artifacts_of))| {
                let (stage, input_schema, schema) = b.expect("every stage built");
                PlanNode {
                    id: config.id.clone(),
                    uses: config.uses.clone(),
                    kind: kinds[i],
                    input: inputs[i],
                    on_error: config.on_error.unwrap_or(file.settings.on_error),
                    stage,
                    input_schema,
                    schema,
                    pending,
                    uses_artifacts_of,
                }
            })
            .collect();
        Ok(Plan { file, output_dir, nodes, loops, warnings })
    }

    /// The stage graph in Mermaid syntax.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for n in &self.nodes {
            out.push_str(&format!("  {}[\"{}<br/><small>{}</small>\"]\n", mermaid_id(&n.id), n.id, n.uses));
        }
        for n in &self.nodes {
            if let Some(up) = n.input {
                out.push_str(&format!("  {} --> {}\n", mermaid_id(&self.nodes[up].id), mermaid_id(&n.id)));
            }
        }
        for l in &self.loops {
            let (node, head) = (&self.nodes[l.node].id, &self.nodes[l.span[0]].id);
            out.push_str(&format!("  {} -. retry .-> {}\n", mermaid_id(node), mermaid_id(head)));
        }
        for n in &self.nodes {
            for producer in &n.uses_artifacts_of {
                out.push_str(&format!("  {} -. artifacts .-> {}\n", mermaid_id(producer), mermaid_id(&n.id)));
            }
        }
        out
    }

    /// The stage graph in Graphviz dot syntax.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for n in &self.nodes {
            out.push_str(&format!("  \"{}\" [label=\"{}\\n{}\"];\n", n.id, n.id, n.uses));
        }
        for n in &self.nodes {
            if let Some(up) = n.input {
                out.push_str(&format!("  \"{}\" -> \"{}\";\n", self.nodes[up].id, n.id));
            }
        }
        for l in &self.loops {
            let (node, head) = (&self.nodes[l.node].id, &self.nodes[l.span[0]].id);
            out.push_str(&format!("  \"{node}\" -> \"{head}\" [style=dashed, label=\"retry\"];\n"));
        }
        for n in &self.nodes {
            for producer in &n.uses_artifacts_of {
                out.push_str(&format!("  \"{producer}\" -> \"{}\" [style=dotted, label=\"artifacts\"];\n", n.id));
            }
        }
        out.push_str("}\n");
        out
    }
}

fn mermaid_id(id: &str) -> String {
    format!("s_{}", id.replace('-', "_"))
}

/// The output folder must be a folder, or not exist yet inside one: a regular file in its place (or
/// in place of a folder above it) is a diagnostic now, not an error once the work is done.
fn check_output_dir(file: &PipelineFile, output_dir: &std::path::Path, from_flag: bool) -> Result<(), Diagnostic> {
    let Some(existing) = output_dir.ancestors().find(|p| p.as_os_str().is_empty() || p.exists()) else {
        return Ok(());
    };
    if existing.as_os_str().is_empty() || existing.is_dir() {
        return Ok(());
    }
    let what = if existing == output_dir {
        format!("output folder {} is a file, not a folder", output_dir.display())
    } else {
        format!("output folder {} cannot be made: {} is a file", output_dir.display(), existing.display())
    };
    let d = if from_flag {
        Diagnostic::new(format!("--output-dir: {what}"))
    } else {
        file.sources.error(file.output_dir_span.clone(), what)
    };
    Err(d.hint("choose another output_dir, or move the file away"))
}

/// A stage that waits for a train stage's artifacts must not read from a source the train stage
/// also reads: it would hold that source's rows (its queue full) while the train stage needs them
/// to finish.
fn check_waits(configs: &[StageConfig], inputs: &[Option<usize>], pending: &[Option<Pending>]) -> Result<()> {
    let chain = |mut at: Option<usize>| {
        let mut out = Vec::new();
        while let Some(i) = at {
            out.push(i);
            at = inputs[i];
        }
        out
    };
    let index: HashMap<&str, usize> = configs.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
    for (i, p) in pending.iter().enumerate() {
        let Some(p) = p else { continue };
        let config = &configs[i];
        let mine = chain(inputs[i]);
        for producer in &p.producers {
            let theirs = chain(index.get(producer.as_str()).copied());
            if let Some(shared) = mine.iter().find(|m| theirs.contains(m) && pending[**m].is_none()) {
                let d = config.params.diagnostic(
                    None,
                    &format!(
                        "it waits for the artifacts of \"{producer}\" and reads from \"{}\", which feeds \"{producer}\" \
                         too: it would hold rows that \"{producer}\" needs to finish",
                        configs[*shared].id
                    ),
                    Some("feed it from a source of its own (a second collect stage)".into()),
                );
                return Err(d.into());
            }
        }
    }
    Ok(())
}

/// Checks every retry node's span and wires it as a loop: the span's stages come one after the
/// other, end with the retry node's input, are row-wise transforms that feed nothing else, belong
/// to one span only, and pass on the columns the span's first stage reads. Each failure is a
/// diagnostic at the retry node's `stages`.
fn plan_loops(
    configs: &[StageConfig],
    plugins: &[Arc<dyn crate::plugin::Plugin>],
    kinds: &[PluginKind],
    inputs: &[Option<usize>],
    built: &[Option<Built>],
    pending: &[Option<Pending>],
) -> Result<Vec<LoopPlan>> {
    let index: HashMap<&str, usize> = configs.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); configs.len()];
    for (i, input) in inputs.iter().enumerate() {
        if let Some(up) = input {
            consumers[*up].push(i);
        }
    }
    let mut loops = Vec::new();
    let mut taken: HashMap<usize, usize> = HashMap::new();
    for (node, b) in built.iter().enumerate() {
        // A retry node built now, or one built during the run (after training): its span is
        // checked here as far as the stages are known, and the rest when they are built.
        let (stages, input_schema) = match (b, &pending[node]) {
            (Some((Stage::Retry(retry), input_schema, _)), _) => (retry.stages.clone(), Some(input_schema)),
            (_, Some(_)) if !plugins[node].retries(&configs[node].params).is_empty() => {
                (plugins[node].retries(&configs[node].params), None)
            }
            _ => continue,
        };
        let retry_stages = &stages;
        let config = &configs[node];
        let fail = |message: String, hint: Option<&str>| -> Error {
            config.params.diagnostic(Some("stages"), &message, hint.map(str::to_string)).into()
        };
        let feeding = inputs[node].map(|up| configs[up].id.as_str()).unwrap_or_default();
        let Some(last) = retry_stages.last() else {
            return Err(fail(
                "name the stages to re-run".into(),
                Some("e.g. stages = [\"generate\", \"classify\", \"score\"], ending with the stage before this one"),
            ));
        };
        if last != feeding {
            return Err(fail(
                format!("the span must end with the stage feeding this one (\"{feeding}\"), not \"{last}\""),
                None,
            ));
        }
        let mut span = Vec::with_capacity(retry_stages.len());
        for (k, id) in retry_stages.iter().enumerate() {
            let Some(&i) = index.get(id.as_str()).filter(|&&i| i != node) else {
                return Err(fail(format!("no stage \"{id}\" comes before this one"), None));
            };
            if kinds[i] != PluginKind::Transform {
                return Err(fail(
                    format!("stage \"{id}\" is a {}; only transforms can be re-run", kinds[i].as_str()),
                    Some("start the span after the source, e.g. at the generating model"),
                ));
            }
            if k > 0 && inputs[i] != Some(span[k - 1]) {
                return Err(fail(
                    format!("stage \"{id}\" is not fed by \"{}\"; the span must be contiguous", retry_stages[k - 1]),
                    None,
                ));
            }
            // A stage built during the run is held to its promise batch by batch by the runner.
            let row_wise = match &built[i] {
                _ if pending[i].is_some() => true,
                Some((Stage::Transform(t), _, _)) => t.row_wise(),
                _ => false,
            };
            if !row_wise {
                return Err(fail(
                    format!(
                        "stage \"{id}\" ({}) is not row-wise: a re-run stage must give one row per row it gets, \
                         with the same id, as it gets it",
                        configs[i].uses
                    ),
                    Some("re-run only per-row stages (models, scores, per-row SQL); filter or group after the retry"),
                ));
            }
            let next =
                if k + 1 < retry_stages.len() { index.get(retry_stages[k + 1].as_str()).copied() } else { Some(node) };
            if let Some(other) = consumers[i].iter().find(|&&c| Some(c) != next) {
                return Err(fail(
                    format!(
                        "stage \"{id}\" also feeds \"{}\", outside the span: its re-run rows would reach it too",
                        configs[*other].id
                    ),
                    Some("feed other stages from after the retry"),
                ));
            }
            if let Some(&owner) = taken.get(&i) {
                return Err(fail(format!("stage \"{id}\" is re-run by \"{}\" already", configs[owner].id), None));
            }
            taken.insert(i, node);
            span.push(i);
        }
        let span_input_from = inputs[span[0]].map(|up| configs[up].id.clone());
        let span_input = match inputs[span[0]] {
            Some(up) if pending[up].is_some() => None,
            _ => Some(built[span[0]].as_ref().expect("built").1.clone()),
        };
        // A retry starts from the span's input columns, taken from the row as it first arrives here.
        if let (Some(input_schema), Some(span_input)) = (input_schema, &span_input)
            && let Some(field) = crate::columns::first_missing(input_schema, span_input)
        {
            return Err(fail(
                format!("column `{}`, which \"{}\" reads, does not reach this stage", field.name(), retry_stages[0]),
                Some("the span's stages must pass their input columns on"),
            ));
        }
        loops.push(LoopPlan { node, span, span_input, span_input_from });
    }
    Ok(loops)
}

/// Turns a stage's configuration error into a diagnostic located in its table.
fn locate(config: &StageConfig, err: Error) -> Error {
    match err {
        Error::Config { key, message, hint } => config.params.diagnostic(key.as_deref(), &message, hint).into(),
        Error::Invalid(d) => Error::Invalid(d),
        other => config.params.diagnostic(None, &other.to_string(), None).into(),
    }
}

/// Stages ordered so every input comes before its consumers; a cycle is a diagnostic.
fn topological_order(
    sources: &Sources,
    configs: &[StageConfig],
    inputs: &[Option<usize>],
) -> Result<Vec<usize>, Box<Diagnostic>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; configs.len()];
    let mut order = Vec::with_capacity(configs.len());
    for start in 0..configs.len() {
        let mut chain: Vec<usize> = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match marks[i] {
                Mark::Done => break,
                Mark::Active => {
                    let from = chain.iter().position(|&c| c == i).unwrap_or(0);
                    let mut names: Vec<&str> = chain[from..].iter().rev().map(|&c| configs[c].id.as_str()).collect();
                    // `chain` follows inputs upstream; data flows the other way, back to the start.
                    names.push(names[0]);
                    let config = &configs[i];
                    let span = config.input.as_ref().map_or(config.uses_span.clone(), |s| s.span());
                    let d = sources
                        .error(span, format!("stages form a cycle: {}", names.join(" -> ")))
                        .hint("each stage's input must come from a stage that does not depend on it");
                    return Err(Box::new(d));
                }
                Mark::New => {
                    marks[i] = Mark::Active;
                    chain.push(i);
                    at = inputs[i];
                }
            }
        }
        for &c in chain.iter().rev() {
            marks[c] = Mark::Done;
            order.push(c);
        }
    }
    Ok(order)
}
