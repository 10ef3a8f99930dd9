//! The `pipe` command line: run, merge, validate, plugins, graph, cache, doctor. A custom binary is a short
//! `main` that builds a [`Registry`] and calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::PipelineFile;
use crate::diag::closest;
use crate::docs::PluginDoc;
use crate::error::Error;
use crate::plan::{Plan, PlanOptions};
use crate::plugin::Shard;
use crate::progress::ProgressMode;
use crate::registry::Registry;
use crate::runner::{INTERRUPTED, RunOptions, run, stop_now};
use crate::shard::{RunFiles, ShardArg};

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Declarative, streaming pipelines for generative AI",
    long_about = "Declarative, streaming pipelines for generative AI.\n\n\
        A pipeline.toml chains stages: collect a dataset, preprocess it, run ONNX models \
        (classifiers, generators, diffusion and text generation loops), refine the results, \
        and write images, text and tables.",
    after_help = "Exit codes: 0 ok, 1 the run failed, 2 the file or a flag is invalid, \
        130 interrupted (Ctrl-C; run.json says \"interrupted\").\n\
        Examples:\n  pipe validate pipeline.toml\n  pipe run pipeline.toml --set pipeline.seed=7\n  pipe run pipeline.toml --shard 3/16 (then: pipe merge pipeline.toml)\n  pipe plugins collect.files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    Run {
        #[command(flatten)]
        file: FileArgs,
        /// Write outputs here instead of [pipeline] output_dir.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// No progress and no summary; errors still go to stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Do not reuse cached results: compute every row of the model stages and train again (what
        /// is made is still cached).
        #[arg(long)]
        no_cache: bool,
        /// Discard the journal of an interrupted run in the output folder and start over (by
        /// default a run of the same pipeline continues it).
        #[arg(long)]
        fresh: bool,
        /// Process shard I of N (from 0): the source rows whose stable hash of `id` falls in it.
        /// `auto` reads the shard from a Slurm job array (SLURM_ARRAY_TASK_ID and _COUNT) or a
        /// Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with N from `auto/N` or
        /// PIPE_SHARD_COUNT). Then `pipe merge` once every shard has ended.
        #[arg(long, value_name = "I/N|auto[/N]")]
        shard: Option<ShardArg>,
    },
    /// After the shards of a run (`pipe run --shard I/N`) have ended: check that every one
    /// finished, and write run.json (their figures combined) and rejects.jsonl (theirs, in order).
    Merge {
        #[command(flatten)]
        file: FileArgs,
        /// The output folder the shards wrote, instead of [pipeline] output_dir.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// How many shards the run had (by default: what the shards' reports there say).
        #[arg(long, value_name = "N")]
        shards: Option<u32>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check a pipeline: plugins, params, the graph, every schema and model signature. Reads no data.
    Validate {
        #[command(flatten)]
        file: FileArgs,
        /// Check it as a shard of a sharded run would be built (stages that need every row are
        /// refused).
        #[arg(long, value_name = "I/N|auto[/N]")]
        shard: Option<ShardArg>,
    },
    /// List the plugins, or describe one: its params (type, default, meaning) and columns.
    Plugins {
        /// A plugin name, e.g. collect.files.
        name: Option<String>,
    },
    /// Print the stage graph.
    Graph {
        #[command(flatten)]
        file: FileArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// List or prune the cache: training artifacts and the model stages' per-row results.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Show what this machine offers the plugins: the Python for process plugins, and the
    /// checks the binary adds (the ONNX Runtime library pipe finds and its execution providers).
    Doctor,
}

#[derive(Subcommand)]
enum CacheAction {
    /// List the entries: kind, key, size, age, and the stage that made each.
    List {
        #[command(flatten)]
        at: CacheArgs,
    },
    /// Remove entries older than --older-than, then the oldest until the rest fit in --max-size,
    /// and scratch folders left by killed runs.
    Prune {
        #[command(flatten)]
        at: CacheArgs,
        /// Remove entries older than this: 30s, 15m, 12h, 7d, 2w.
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Keep at most this much: 500MB, 2GB.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
}

#[derive(clap::Args)]
struct CacheArgs {
    /// The cache of this pipeline file ([pipeline] cache_dir); else PIPE_CACHE_DIR, else
    /// .pipe/cache in the current folder.
    file: Option<PathBuf>,
    /// The cache folder itself.
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct FileArgs {
    /// The pipeline file.
    file: PathBuf,
    /// Override a key: ID.KEY=VALUE with a TOML value (e.g. gen.steps=20, pipeline.seed=7).
    #[arg(long = "set", value_name = "ID.KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

/// For the commands that only print (`pipe plugins | head`): a closed stdout ends the process
/// quietly, as for any Unix filter, instead of a panic in `println!`. Not for `run` and
/// `validate`, which write to process plugins' pipes and must see a plugin that died as an
/// error, not die of SIGPIPE themselves.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line and runs the command with these plugins; returns the exit code.
pub fn main(registry: Registry) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PIPE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Plugins { .. } | Command::Graph { .. } | Command::Doctor) {
        quiet_on_closed_stdout();
    }
    let code = match cli.command {
        Command::Run { file, output_dir, quiet, no_cache, fresh, shard } => match resolve_shard(shard) {
            Ok(shard) => cmd_run(&registry, file, RunFlags { output_dir, quiet, no_cache, fresh, shard }),
            Err(code) => code,
        },
        Command::Merge { file, output_dir, shards, quiet } => cmd_merge(file, output_dir, shards, quiet),
        Command::Validate { file, shard } => match resolve_shard(shard) {
            Ok(shard) => cmd_validate(&registry, file, shard),
            Err(code) => code,
        },
        Command::Plugins { name } => cmd_plugins(&registry, name.as_deref()),
        Command::Graph { file, format } => cmd_graph(&registry, file, format),
        Command::Doctor => crate::doctor::run(&registry),
        Command::Cache { action } => cmd_cache(action),
    };
    ExitCode::from(code as u8)
}

fn cmd_cache(action: CacheAction) -> i32 {
    let at = match &action {
        CacheAction::List { at } | CacheAction::Prune { at, .. } => at,
    };
    let root = match (&at.dir, &at.file) {
        (Some(dir), _) => dir.clone(),
        (None, Some(file)) => match PipelineFile::load(file, &[]) {
            Ok(f) => crate::cache::Cache::folder(&f.dir, &f.settings.cache_dir),
            Err(d) => return report_error(&Error::from(d)),
        },
        (None, None) => crate::cache::Cache::folder(std::path::Path::new("."), ".pipe/cache"),
    };
    let cache = crate::cache::Cache::new(root.clone());
    let age = |t: std::time::SystemTime| {
        let s = std::time::SystemTime::now().duration_since(t).unwrap_or_default().as_secs();
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m", s / 60),
            3600..86_400 => format!("{}h", s / 3600),
            _ => format!("{}d", s / 86_400),
        }
    };
    match action {
        CacheAction::List { .. } => match cache.list() {
            Ok(entries) => {
                println!("{}: {} entries", root.display(), entries.len());
                for e in &entries {
                    let made_by = match (e.meta["pipeline"].as_str(), e.meta["stage"].as_str()) {
                        (Some(p), Some(s)) => format!("{p}/{s}"),
                        _ => String::new(),
                    };
                    println!(
                        "  {:<6} {}  {:>9}  {:>4} ago  {made_by}",
                        e.kind,
                        e.key,
                        crate::cache::human_bytes(e.bytes),
                        age(e.modified)
                    );
                }
                0
            }
            Err(e) => report_error(&e),
        },
        CacheAction::Prune { older_than, max_size, .. } => {
            let older = match older_than.as_deref().map(|t| (t, crate::cache::parse_age(t))) {
                Some((t, None)) => {
                    eprintln!("error: --older-than {t}: give an age such as 30s, 15m, 12h, 7d or 2w");
                    return 2;
                }
                Some((_, age)) => age,
                None => None,
            };
            let max = match max_size.as_deref().map(|t| (t, crate::cache::parse_bytes(t))) {
                Some((t, None)) => {
                    eprintln!("error: --max-size {t}: give a size such as 500MB or 2GB");
                    return 2;
                }
                Some((_, size)) => size,
                None => None,
            };
            match cache.prune(older, max) {
                Ok(removed) => {
                    let bytes: u64 = removed.iter().map(|e| e.bytes).sum();
                    println!(
                        "{}: removed {} entries ({})",
                        root.display(),
                        removed.len(),
                        crate::cache::human_bytes(bytes)
                    );
                    0
                }
                Err(e) => report_error(&e),
            }
        }
    }
}

fn plan(registry: &Registry, file: &FileArgs, options: &PlanOptions) -> Result<Plan, Error> {
    let started = std::time::Instant::now();
    let parsed = PipelineFile::load(&file.file, &file.set)?;
    let read = started.elapsed();
    let plan = Plan::build(parsed, registry, options)?;
    // `PIPE_LOG=debug` shows where start-up goes (BENCHMARKS.md, bench/startup.sh).
    tracing::debug!(
        read_ms = read.as_secs_f64() * 1e3,
        built_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
        "plan"
    );
    Ok(plan)
}

fn report_error(err: &Error) -> i32 {
    match err.root() {
        Error::Invalid(d) => eprint!("{d}"),
        _ => eprintln!("error: {err}"),
    }
    err.exit_code()
}

fn print_warnings(plan: &Plan) {
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
}

/// The flags of `pipe run`.
struct RunFlags {
    output_dir: Option<PathBuf>,
    quiet: bool,
    no_cache: bool,
    fresh: bool,
    shard: Option<Shard>,
}

/// `--shard` as the shard to run, from the environment for `auto`; a bad value is exit 2.
fn resolve_shard(arg: Option<ShardArg>) -> Result<Option<Shard>, i32> {
    match arg.map(|a| a.resolve(|name| std::env::var(name).ok())).transpose() {
        Ok(shard) => Ok(shard),
        Err(e) => {
            eprintln!("error: {e}");
            Err(2)
        }
    }
}

fn cmd_run(registry: &Registry, file: FileArgs, flags: RunFlags) -> i32 {
    let RunFlags { output_dir, quiet, no_cache, fresh, shard } = flags;
    let options = PlanOptions { output_dir, validate_only: false, no_cache, shard };
    let plan = match plan(registry, &file, &options) {
        Ok(p) => p,
        Err(e) => return report_error(&e),
    };
    print_warnings(&plan);
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: stopping now");
            stop_now();
        }
        eprintln!("\ninterrupted: finishing the work in flight (Ctrl-C again to stop now)");
    });
    let report_path = RunFiles::new(&plan.output_dir, shard).report;
    let output_dir = plan.output_dir.clone();
    let run_reports = plan.file.settings.run_reports.clone();
    let ran = run(plan, RunOptions { progress: ProgressMode::detect(quiet), fresh, shard });
    // Uploaded whether the run succeeded or not: `pipe merge` names a failed shard by its report.
    let published = run_reports.map_or(Ok(()), |url| crate::merge::publish(&output_dir, shard, &url));
    let code = match ran {
        Ok(report) => {
            if !quiet {
                eprint!("{}", report.summary());
                eprintln!("done in {:.2}s: {}", report.seconds, report_path.display());
                if let Some(path) = &report.rejects_file {
                    eprintln!("{} rows rejected: {}", report.rejected, path.display());
                }
            }
            0
        }
        Err(e) => {
            let code = report_error(&e);
            eprintln!("see {}", report_path.display());
            code
        }
    };
    match published {
        Ok(()) => code,
        Err(e) => {
            let failed = report_error(&e);
            if code == 0 { failed } else { code }
        }
    }
}

fn cmd_merge(file: FileArgs, output_dir: Option<PathBuf>, shards: Option<u32>, quiet: bool) -> i32 {
    let parsed = match PipelineFile::load(&file.file, &file.set) {
        Ok(f) => f,
        Err(d) => return report_error(&Error::from(d)),
    };
    let output_dir = output_dir.unwrap_or_else(|| parsed.resolve(&parsed.settings.output_dir));
    let merged = match &parsed.settings.run_reports {
        Some(url) => crate::merge::merge_remote(url, &output_dir, &parsed.settings.name, shards),
        None => crate::merge::merge(&output_dir, &parsed.settings.name, shards),
    };
    let written = match &parsed.settings.run_reports {
        Some(url) => format!("{}/run.json", url.trim_end_matches('/')),
        None => RunFiles::new(&output_dir, None).report.display().to_string(),
    };
    match merged {
        Ok(report) => {
            if !quiet {
                eprint!("{}", report.summary());
                eprintln!(
                    "merged {} shards ({:.2}s in all, {:.2}s the longest): {}",
                    report.shards.unwrap_or(0),
                    report.shard_seconds.unwrap_or(0.0),
                    report.seconds,
                    written
                );
                if let Some(path) = &report.rejects_file {
                    eprintln!("{} rows rejected: {}", report.rejected, path.display());
                }
            }
            0
        }
        Err(e) => report_error(&e),
    }
}

fn cmd_validate(registry: &Registry, file: FileArgs, shard: Option<Shard>) -> i32 {
    let options = PlanOptions { output_dir: None, validate_only: true, no_cache: false, shard };
    match plan(registry, &file, &options) {
        Ok(plan) => {
            print_warnings(&plan);
            println!("{}: valid ({} stages)", file.file.display(), plan.nodes.len());
            for n in &plan.nodes {
                if let Some(p) = &n.pending {
                    println!("  {} ({}) -> built after training: {}", n.id, n.uses, p.producers().join(", "));
                    continue;
                }
                let cols: Vec<String> =
                    n.schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
                println!("  {} ({}) -> {}", n.id, n.uses, cols.join(", "));
            }
            0
        }
        Err(e) => report_error(&e),
    }
}

fn cmd_graph(registry: &Registry, file: FileArgs, format: GraphFormat) -> i32 {
    let options = PlanOptions { output_dir: None, validate_only: true, no_cache: false, shard: None };
    match plan(registry, &file, &options) {
        Ok(plan) => {
            print!(
                "{}",
                match format {
                    GraphFormat::Mermaid => plan.mermaid(),
                    GraphFormat::Dot => plan.dot(),
                }
            );
            0
        }
        Err(e) => report_error(&e),
    }
}

fn cmd_plugins(registry: &Registry, name: Option<&str>) -> i32 {
    let Some(name) = name else {
        let width = registry.names().map(str::len).max().unwrap_or(0);
        for plugin in registry.iter() {
            let doc = plugin.doc();
            let summary = doc.summary.split(". ").next().unwrap_or("").trim_end_matches('.');
            println!("{:<width$}  {:<9}  {summary}", plugin.name(), doc.kind.as_str());
        }
        return 0;
    };
    match registry.get(name) {
        Some(plugin) => {
            print!("{}", render_doc(plugin.name(), &plugin.doc()));
            0
        }
        None => {
            eprintln!("error: unknown plugin \"{name}\"");
            match closest(name, registry.names()) {
                Some(best) => eprintln!("  = hint: did you mean \"{best}\"?"),
                None => eprintln!("  = hint: `pipe plugins` lists them"),
            }
            2
        }
    }
}

fn render_doc(name: &str, doc: &PluginDoc) -> String {
    let mut out = format!("{name} ({})\n\n{}\n", doc.kind.as_str(), doc.summary);
    if !doc.params.is_empty() {
        out.push_str("\nParams:\n");
        for p in &doc.params {
            let default = match (&p.default, p.required) {
                (_, true) => "required".to_string(),
                (Some(d), _) => format!("default {d}"),
                (None, _) => "optional".to_string(),
            };
            out.push_str(&format!("  {} ({}; {default})\n      {}\n", p.name, p.ty, p.doc));
        }
    }
    for (title, cols) in [("Reads", &doc.reads), ("Writes", &doc.writes)] {
        if !cols.is_empty() {
            out.push_str(&format!("\n{title}:\n"));
            for c in cols {
                out.push_str(&format!("  {} ({})  {}\n", c.name, c.ty, c.doc));
            }
        }
    }
    if let Some(example) = &doc.example {
        out.push_str("\nExample:\n");
        for line in example.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}
