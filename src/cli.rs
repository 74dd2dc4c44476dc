//! Command-line interface: argument parsing and the `once`, `plan`, `check`
//! and `ring` commands. Exit codes: 0 ok, 1 failure, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Service};
use crate::config::{check_service_scripts, effective_services};
use crate::pass::{PassInput, PassOptions, PassReport, run_pass};
use crate::script::{Sandbox, ScriptCache, ScriptRun};
use crate::sim::SimArgs;

/// Shard Prometheus scrape targets over a pool of Prometheus servers.
#[derive(Debug, Parser)]
#[command(name = "promshard", version, about, long_about = None)]
pub struct Cli {
    /// Config file.
    #[arg(long, short, global = true, default_value = "promshard.yaml")]
    pub config: PathBuf,
    /// Log format (filter with RUST_LOG, e.g. RUST_LOG=promshard=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a daemon: passes on each service's schedule and on every change.
    Run,
    /// One pass for all (or one) services: run scripts, plan, write, deliver.
    Once(PassArgs),
    /// Show the assignment a pass would make; writes and delivers nothing.
    Plan(PassArgs),
    /// Validate the config, find drop-in services and compile every script.
    Check(CheckArgs),
    /// Simulate placement on a synthetic fleet (balance, movement, vs hashmod).
    Ring(SimArgs),
}

/// Arguments of `once` and `plan`.
#[derive(Debug, Args)]
pub struct PassArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Print a machine-readable JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Apply even if the pass would drop more than max_drop_ratio of the targets.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also run each script's targets() (and nodes()) and report what it
    /// returns; writes nothing.
    #[arg(long)]
    pub run: bool,
}

/// Set up logging to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parse arguments and run; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Ring(args) => crate::sim::main(args).map(|_| true),
        Command::Check(args) => check(&cli.config, args),
        Command::Run => with_runtime(|| run_daemon(cli.config.clone())),
        Command::Once(args) => with_runtime(|| pass_command(&cli.config, args, false)),
        Command::Plan(args) => with_runtime(|| pass_command(&cli.config, args, true)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("promshard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long a shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(9);

async fn run_daemon(config: PathBuf) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let watcher = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        watcher.cancel();
        // A pass stuck in a script cannot be interrupted from outside its
        // thread; never let that hold the process past the grace period.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_GRACE);
            tracing::warn!("shutdown grace period over; exiting");
            std::process::exit(0);
        });
    });
    crate::daemon::run(config, shutdown).await?;
    Ok(true)
}

fn with_runtime<F, Fut>(f: F) -> anyhow::Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f())
}

/// The services a command applies to, among `services` (from
/// [`crate::config::effective_services`]).
fn select<'a>(
    config: &Config,
    services: &'a [Arc<Service>],
    only: Option<&str>,
) -> anyhow::Result<Vec<&'a Arc<Service>>> {
    match only {
        None => Ok(services.iter().collect()),
        Some(name) => services
            .iter()
            .find(|s| s.name == name)
            .map(|s| vec![s])
            .ok_or_else(|| {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                anyhow::anyhow!(
                    "no service {name:?} in {} (known: {})",
                    config.path.display(),
                    known.join(", ")
                )
            }),
    }
}

async fn pass_command(
    path: &std::path::Path,
    args: &PassArgs,
    dry_run: bool,
) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let sandbox = Sandbox::for_config(&config);
    let cancel = CancellationToken::new();
    let cache = Arc::new(ScriptCache::new());
    let (services, problems) = {
        let (config, cache) = (config.clone(), Arc::clone(&cache));
        tokio::task::spawn_blocking(move || effective_services(&config, &cache)).await?
    };
    let mut all_ok = true;
    if args.service.is_none() {
        for p in &problems {
            all_ok = false;
            tracing::error!(script = %p.path.display(), service = %p.name, "{}", p.message);
        }
    }
    let mut outcomes = Vec::new();
    for service in select(&config, &services, args.service.as_deref())? {
        let result = match cache.get(&service.script) {
            Err(e) => Err(e.into()),
            Ok(script) => {
                let input = PassInput {
                    config: &config,
                    service,
                    script: &script,
                    nodes: &service.nodes,
                    sandbox: &sandbox,
                    node_filter: None,
                    node_script: None,
                };
                run_pass(
                    input,
                    PassOptions {
                        dry_run,
                        force: args.force,
                    },
                    &cancel,
                )
                .await
            }
        };
        match &result {
            Ok(r) if r.failed_deliveries() > 0 => {
                all_ok = false;
                tracing::error!(service = %service.name, failed = r.failed_deliveries(), "pass wrote its files but some deliveries failed");
            }
            Ok(_) => {}
            Err(e) => {
                all_ok = false;
                tracing::error!(service = %service.name, error = %e, "pass failed; files left as they were");
            }
        }
        outcomes.push((service.name.clone(), result));
    }
    if args.json {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Outcome<'a> {
            Done(&'a PassReport),
            Failed { name: &'a str, error: String },
        }
        #[derive(serde::Serialize)]
        struct Output<'a> {
            services: Vec<Outcome<'a>>,
        }
        let services = outcomes
            .iter()
            .map(|(name, r)| match r {
                Ok(report) => Outcome::Done(report),
                Err(e) => Outcome::Failed {
                    name,
                    error: e.to_string(),
                },
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&Output { services })?);
    } else if dry_run {
        for (name, r) in &outcomes {
            match r {
                Ok(report) => print_plan(report),
                Err(e) => println!("service {name}: ERROR: {e}\n"),
            }
        }
    }
    Ok(all_ok)
}

fn print_plan(r: &PassReport) {
    println!(
        "service {}: {} targets ({} invalid, {} duplicates merged), {} nodes, each target on {} node(s)",
        r.name,
        r.targets,
        r.invalid,
        r.duplicates,
        r.nodes.len(),
        r.replicas
    );
    for bad in &r.invalid_samples {
        println!("  invalid: {bad}");
    }
    let width = r
        .nodes
        .iter()
        .map(|n| n.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:<width$}  {:>7}  {:>6}  {:>6}  FILE",
        "NODE", "TARGETS", "IN", "OUT"
    );
    for n in &r.nodes {
        println!(
            "  {:<width$}  {:>7}  {:>6}  {:>6}  {}",
            n.node, n.count, n.moved_in, n.moved_out, n.file
        );
    }
    println!();
}

fn check(path: &std::path::Path, args: &CheckArgs) -> anyhow::Result<bool> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(false);
        }
    };
    if let Some(warning) = config.exposure_warning() {
        eprintln!("warning: {warning}");
    }
    let cache = ScriptCache::new();
    let sandbox = Sandbox::for_config(&config);
    let (services, problems) = effective_services(&config, &cache);
    let mut ok = problems.is_empty();
    for p in &problems {
        eprintln!("{p}");
    }
    for s in &services {
        match check_service_scripts(s, &cache) {
            Ok(script) => {
                let nodes = match (&s.node_script, s.nodes.len()) {
                    (Some(n), _) => format!("nodes from {}", n.display()),
                    (None, _) if script.has_fn("nodes", 1) => "nodes from fn nodes(ctx)".into(),
                    (None, n) => format!("{n} nodes"),
                };
                println!(
                    "ok: service {} ({}{}, {nodes}, replicas {}, schedule {})",
                    s.name,
                    if s.drop_in { "drop-in " } else { "" },
                    s.script.display(),
                    s.replicas,
                    s.schedule
                );
                if args.run && !check_run(s, &script, &sandbox) {
                    ok = false;
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{e} (service {})", s.name);
            }
        }
    }
    let drop_ins = services.iter().filter(|s| s.drop_in).count();
    if ok {
        println!(
            "{}: {} service(s) ({} drop-in), all scripts compile{}",
            config.path.display(),
            services.len(),
            drop_ins,
            if args.run { " and run" } else { "" }
        );
    }
    Ok(ok)
}

/// How many invalid entries `check --run` shows.
const CHECK_SAMPLES: usize = 5;

/// `check --run` for one service: call nodes() and targets(), print what
/// they returned and the first problems. Writes nothing.
fn check_run(s: &Service, script: &crate::script::CompiledScript, sandbox: &Sandbox) -> bool {
    let started = std::time::Instant::now();
    let nodes = match crate::pass::script_nodes(s, script, None, sandbox) {
        None => s.nodes.clone(),
        Some(Ok(n)) => {
            let list: Vec<&str> = n.iter().map(|n| n.addr.as_str()).collect();
            println!("  nodes(): {} node(s): {}", n.len(), list.join(", "));
            n
        }
        Some(Err(e)) => {
            eprintln!("  {e} (service {})", s.name);
            return false;
        }
    };
    let run = ScriptRun::new(script, sandbox);
    match run.targets(crate::pass::script_ctx(s, &nodes)) {
        Err(e) => {
            eprintln!("  {e} (service {})", s.name);
            false
        }
        Ok((groups, mut invalid)) => {
            let normalized = crate::target::normalize(groups);
            invalid.extend(normalized.invalid);
            invalid.sort_by_key(|i| i.group);
            println!(
                "  targets(): {} target(s), {} invalid, {} duplicate(s) merged, in {} ms",
                normalized.targets.len(),
                invalid.len(),
                normalized.duplicates,
                started.elapsed().as_millis()
            );
            for bad in invalid.iter().take(CHECK_SAMPLES) {
                println!("  invalid: {bad}");
            }
            if invalid.len() > CHECK_SAMPLES {
                println!("  … and {} more invalid", invalid.len() - CHECK_SAMPLES);
            }
            if normalized.targets.is_empty() {
                println!("  warning: no targets");
            }
            true
        }
    }
}
