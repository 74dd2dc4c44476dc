//! Command-line interface: argument parsing and the `once`, `plan`, `check`
//! and `where` commands (`rendezvous` is [`crate::sim`], `drain` [`drain`]). Exit codes: 0 ok, 1 failure, 2 usage error.

mod api;
mod drain;
mod generate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Service};
use crate::pass::{PassError, PassInput, PassOptions, PassReport, run_pass};
use crate::script::dropin::{check_service_scripts, describe_drop_ins, effective_services};
use crate::script::{Sandbox, ScriptCache, ScriptRun};
use crate::shard::placement::NodeSpec;
use crate::sim::SimArgs;

mod table;

/// Shard Prometheus scrape targets over a pool of Prometheus servers.
#[derive(Debug, Parser)]
#[command(name = "promshard", version = crate::build::LONG_VERSION, about, long_about = None)]
pub struct Cli {
    /// Config file [default: promshard.yaml]; may also follow the command.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format (filter with RUST_LOG, e.g. RUST_LOG=promshard=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The config file of a command that reads one. Not a global option:
/// `rendezvous` reads none and must not offer it.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: promshard.yaml].
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The config file used when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "promshard.yaml";

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
    Run(RunArgs),
    /// One pass for all (or one) services: run scripts, plan, write, deliver.
    Once(OnceArgs),
    /// Show the assignment a pass would make; writes and delivers nothing.
    Plan(PlanArgs),
    /// Validate the config, list drop-in services and compile every script.
    Check(CheckArgs),
    /// Simulate placement on a synthetic fleet (balance, movement, vs
    /// hashmod); reads no config.
    #[command(alias = "ring")]
    Rendezvous(SimArgs),
    /// Which Prometheus scrapes a target: asks the running daemon, or
    /// computes the assignment from the config when none answers.
    Where(WhereArgs),
    /// Take a node out of every service that has it without losing a
    /// sample: it keeps its targets until their new nodes have scraped
    /// them, then gets an empty file. Tells the running daemon, else
    /// records it for the next pass.
    Drain(DrainArgs),
    /// Put a drained node back.
    Undrain(DrainArgs),
    /// Write the man pages or a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

impl Command {
    /// The command's name as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Rendezvous(_) => "rendezvous (a simulation of a synthetic fleet)",
            Command::Generate(_) => "generate",
            _ => "this command",
        }
    }

    /// The `-c` given after the command; `None` for the commands that read
    /// no config (`rendezvous`, `generate`).
    fn config_arg(&self) -> Option<&ConfigArg> {
        match self {
            Command::Run(a) => Some(&a.config),
            Command::Once(a) => Some(&a.plan.config),
            Command::Plan(a) => Some(&a.config),
            Command::Check(a) => Some(&a.config),
            Command::Where(a) => Some(&a.config),
            Command::Drain(a) | Command::Undrain(a) => Some(&a.config),
            Command::Rendezvous(_) | Command::Generate(_) => None,
        }
    }
}

impl Cli {
    /// The config file: `-c` before or after the command, else
    /// [`DEFAULT_CONFIG`]. A usage error (exit 2) when given twice, or to
    /// `rendezvous`, which would silently ignore it.
    pub fn config_path(&self) -> Result<PathBuf, clap::Error> {
        use clap::CommandFactory;
        let usage = |message: String| {
            Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message)
        };
        let after = self.command.config_arg();
        match (&self.config, after.and_then(|a| a.config.as_ref())) {
            (Some(c), _) if after.is_none() => Err(usage(format!(
                "{} reads no config file; leave out -c {}",
                self.command.name(),
                c.display()
            ))),
            (Some(a), Some(b)) => Err(usage(format!(
                "-c given twice ({} and {}); give it once",
                a.display(),
                b.display()
            ))),
            (Some(c), None) | (None, Some(c)) => Ok(c.clone()),
            (None, None) => Ok(PathBuf::from(DEFAULT_CONFIG)),
        }
    }
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `drain` and `undrain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node, as in the service's nodes (`host:port`).
    pub node: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Print a machine-readable JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also say how many nodes each service needs when a node holds this
    /// much weight (series, with weights: {from: series}; else targets).
    #[arg(long, value_name = "WEIGHT_PER_NODE")]
    pub capacity: Option<u64>,
    /// `plan` only: show what draining this node would move (repeatable).
    #[arg(long, value_name = "NODE")]
    pub drain: Vec<String>,
    /// `plan` only: show how `ha.mode: shared` would spread the services
    /// over N instances, or over these comma-separated instance names.
    #[arg(long, value_name = "N|NAMES")]
    pub instances: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `once`.
#[derive(Debug, Args)]
pub struct OnceArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Apply even if the pass would drop more than max_drop_ratio of the targets.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `where`.
#[derive(Debug, Args)]
pub struct WhereArgs {
    /// The target, `host:port` as the script returns it.
    pub target: String,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also run each script's targets() (and nodes()) and report what it
    /// returns; writes nothing.
    #[arg(long)]
    pub run: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Set up logging to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .event_format(crate::logging::Logfmt {
                ansi: colour_logs(),
            })
            .init(),
        LogFormat::Json => builder.event_format(crate::logging::Json).init(),
    }
}

/// Colour only for a person at a terminal: never in files, pipes or
/// journald, and never when `NO_COLOR` is set.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Parse arguments and run; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config_path().unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Rendezvous(args) => crate::sim::main(args).map(|_| true),
        Command::Where(args) => with_runtime(|| where_command(&config, args)),
        Command::Check(args) => check(&config, args),
        Command::Drain(args) => drain::drain_command(&config, &args.node, true),
        Command::Undrain(args) => drain::drain_command(&config, &args.node, false),
        Command::Run(_) => with_runtime(|| run_daemon(config.clone())),
        Command::Generate(args) => generate::generate(args).map(|()| true),
        Command::Once(args) => with_runtime(|| {
            let options = PassOptions {
                dry_run: false,
                force: args.force,
            };
            pass_command(&config, &args.plan, options)
        }),
        Command::Plan(args) => with_runtime(|| {
            let options = PassOptions {
                dry_run: true,
                force: false,
            };
            pass_command(&config, args, options)
        }),
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

/// Run the daemon until SIGTERM or SIGINT, then give its tasks
/// [`SHUTDOWN_GRACE`] to finish. A pass stuck in a script cannot be
/// interrupted from outside its thread: past the grace the runtime is
/// left behind (see [`with_runtime`]) and the process exits.
async fn run_daemon(config: PathBuf) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = crate::shutdown::Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signalled = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            shutdown.cancel();
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        result = crate::daemon::run(config, shutdown) => result?,
        () = signalled => tracing::warn!("shutdown grace period over; exiting"),
    }
    Ok(true)
}

fn with_runtime<F, Fut>(f: F) -> anyhow::Result<bool>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(f());
    // Blocking tasks still running (a script stuck past a shutdown's
    // grace) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// The services a command applies to, among `services` (from
/// [`crate::script::dropin::effective_services`]).
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
    args: &PlanArgs,
    options: PassOptions,
) -> anyhow::Result<bool> {
    if !options.dry_run && !args.drain.is_empty() {
        anyhow::bail!("--drain only previews a drain with `plan`; use `promshard drain NODE`");
    }
    if !options.dry_run && args.instances.is_some() {
        anyhow::bail!("--instances only previews a spread with `plan`");
    }
    let instances = args.instances.as_deref().map(instance_names).transpose()?;
    let config = Config::load(path)?;
    if config.ha.is_some() && !options.dry_run {
        anyhow::bail!(
            "{}: ha: is set, so only the elected leader of `promshard run` writes and delivers; `once` would bypass the election (use `plan`, or remove ha: for a one-off)",
            path.display()
        );
    }
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
        let result = match cache.for_service(service) {
            Err(e) => Err(e.into()),
            Ok(script) => {
                let preview = &args.drain;
                static_pass(
                    &config, service, &script, &sandbox, options, &cancel, preview,
                )
                .await
            }
        };
        all_ok &= pass_ok(&service.name, &result);
        outcomes.push((service.name.clone(), result));
    }
    if args.json {
        print_json(&outcomes, options.dry_run)?;
    } else {
        for (name, r) in &outcomes {
            match r {
                Ok(report) => {
                    table::print_table(report);
                    if let (Some(c), Some(s)) =
                        (args.capacity, services.iter().find(|s| &s.name == name))
                    {
                        print_capacity(report, c, s.ring.load_factor);
                    }
                }
                Err(e) => println!("service {name}: ERROR: {e}\n"),
            }
        }
        if let Some(names) = &instances {
            print_spread(names, &outcomes)?;
        }
    }
    Ok(all_ok)
}

/// `--instances`: a count (named `instance-1` …) or comma-separated names.
fn instance_names(arg: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = match arg.trim().parse::<usize>() {
        Ok(0) => anyhow::bail!("--instances 0: give at least one instance"),
        Ok(n) => (1..=n).map(|i| format!("instance-{i}")).collect(),
        Err(_) => arg
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if names.is_empty() {
        anyhow::bail!("--instances {arg:?}: give a number or comma-separated instance names");
    }
    Ok(names)
}

/// How `ha.mode: shared` would spread the planned services over `names`,
/// weighted by the targets each plan computed.
fn print_spread(
    names: &[String],
    outcomes: &[(String, Result<PassReport, PassError>)],
) -> anyhow::Result<()> {
    let services: Vec<(&str, Option<u64>)> = outcomes
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_ref().ok().map(|r| r.targets as u64)))
        .collect();
    let inst: Vec<&str> = names.iter().map(String::as_str).collect();
    let owners = crate::shard::spread::spread(&inst, &services)?;
    let counts: Vec<Option<u64>> = services.iter().map(|(_, t)| *t).collect();
    let weights = crate::shard::spread::weights(&counts);
    let plural = |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
    println!(
        "ha.mode shared: {} {} over {} {} (weight: targets rounded to a power of two)",
        services.len(),
        plural(services.len(), "service", "services"),
        names.len(),
        plural(names.len(), "instance", "instances")
    );
    for name in names {
        let mine: Vec<(usize, &str)> = services
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| owners.get(*s) == Some(name))
            .map(|(i, (s, _))| (i, *s))
            .collect();
        let weight: u64 = mine.iter().map(|(i, _)| u64::from(weights[*i])).sum();
        let list: Vec<&str> = mine.iter().map(|(_, s)| *s).collect();
        let noun = plural(mine.len(), "service", "services");
        let of = if list.is_empty() {
            String::new()
        } else {
            format!(": {}", list.join(", "))
        };
        println!("  {name}: {} {noun}, weight {weight}{of}", mine.len());
    }
    Ok(())
}

/// Log what went wrong in one service's pass; whether nothing did (rule
/// files refused count as wrong).
fn pass_ok(service: &str, result: &Result<PassReport, PassError>) -> bool {
    match result {
        Ok(r) if r.failed_deliveries() > 0 => {
            tracing::error!(
                service,
                failed = r.failed_deliveries(),
                "pass wrote its files but some deliveries failed"
            );
            false
        }
        Ok(r) => r.rules.as_ref().is_none_or(|x| x.is_ok()),
        Err(e) if e.files_kept() => {
            tracing::error!(service, error = %e, "pass failed; files left as they were");
            false
        }
        Err(e) => {
            tracing::error!(service, error = %e, "pass failed after changing files");
            false
        }
    }
}

/// A pass as the commands run it: the nodes as configured or as the
/// script returns them (no health probes), node scripts compiled afresh,
/// weights from the state file.
async fn static_pass(
    config: &Config,
    service: &Service,
    script: &crate::script::CompiledScript,
    sandbox: &Sandbox,
    options: PassOptions,
    cancel: &CancellationToken,
    preview_drained: &[String],
) -> Result<PassReport, PassError> {
    let nodes = crate::pass::resolve_nodes(service, script, None, sandbox)
        .await?
        .unwrap_or_else(|| service.nodes.clone());
    let input = PassInput {
        config,
        service,
        script,
        nodes: &nodes,
        sandbox,
        learned_weights: None,
        previous: None,
        observation: None,
        preview_drained: preview_drained.to_vec(),
        fence: None,
        placement_notes: None,
    };
    run_pass(input, options, cancel).await
}

/// `--json`: every service's report. A dry run delivers nothing, so its
/// report leaves out the delivery fields rather than show `false` and `0`.
fn print_json(
    outcomes: &[(String, Result<PassReport, PassError>)],
    dry_run: bool,
) -> anyhow::Result<()> {
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
    let mut json = serde_json::to_value(Output { services })?;
    if dry_run {
        strip_delivery_fields(&mut json);
    }
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// Fields of `once --json` that only a delivery fills in.
const DELIVERY_FIELDS: [&str; 2] = ["departed", "delivery_runs_s"];
const NODE_DELIVERY_FIELDS: [&str; 4] = ["delivered", "result", "attempts", "error"];

fn strip_delivery_fields(json: &mut serde_json::Value) {
    let services = json["services"].as_array_mut().into_iter().flatten();
    for service in services.filter_map(|s| s.as_object_mut()) {
        for key in DELIVERY_FIELDS {
            service.remove(key);
        }
        if let Some(phases) = service.get_mut("phases_ms").and_then(|p| p.as_object_mut()) {
            phases.remove("deliver");
        }
        let nodes = service.get_mut("nodes").and_then(|n| n.as_array_mut());
        for node in nodes
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_object_mut())
        {
            for key in NODE_DELIVERY_FIELDS {
                node.remove(key);
            }
        }
    }
}

/// `plan --capacity C`: how many nodes of `C` weight (series) each the
/// service needs at its load factor, against how many it has.
fn print_capacity(r: &PassReport, capacity: u64, load_factor: f64) {
    let total: u64 = r
        .nodes
        .iter()
        .map(|n| n.weight.unwrap_or(n.count as u64))
        .sum();
    let needed = ((total as f64 * load_factor) / capacity.max(1) as f64).ceil() as u64;
    println!(
        "service {}: total weight {total} (×{load_factor} headroom) at {capacity} per node needs {} node(s); it has {}\n",
        r.name,
        needed.max(r.replicas as u64),
        r.nodes.len()
    );
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
    if let Some(ha) = &config.ha {
        println!(
            "ok: ha cluster {} as instance {} on etcd {} ({}lease_ttl {}s; etcd not contacted)",
            ha.name,
            ha.instance,
            ha.endpoints.join(", "),
            match ha.mode {
                crate::config::ha::HaMode::Shared => "mode shared, ",
                crate::config::ha::HaMode::Leader => "",
            },
            ha.lease_ttl.as_secs()
        );
    }
    let cache = ScriptCache::new();
    let sandbox = Sandbox::for_config(&config);
    let (services, problems) = effective_services(&config, &cache);
    if let Some(line) = describe_drop_ins(&config, &services) {
        println!("{line}");
    }
    let mut ok = problems.is_empty();
    for p in &problems {
        eprintln!("{p}");
    }
    for s in &services {
        ok &= check_one(&config, s, &cache, &sandbox, args);
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

/// `check` of one service: its directory, its scripts, its default file
/// names, its rule files (and with `--run`, what its script returns).
fn check_one(
    config: &Config,
    s: &Service,
    cache: &ScriptCache,
    sandbox: &Sandbox,
    args: &CheckArgs,
) -> bool {
    let mut ok = true;
    if let Err(e) = check_service_dir(config, s) {
        ok = false;
        eprintln!("{e} (service {})", s.name);
    }
    let usable = check_service_scripts(s, cache)
        .map_err(anyhow::Error::from)
        .and_then(|script| {
            if !script.has_fn("file_name", 1) {
                check_default_file_names(s, &s.nodes)?;
            }
            Ok(script)
        });
    let script = match usable {
        Ok(script) => script,
        Err(e) => {
            eprintln!("{e} (service {})", s.name);
            return false;
        }
    };
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
    if args.run && !check_run(s, &script, sandbox) {
        ok = false;
    }
    crate::rules::check_command(s) && ok
}

/// The service's directory must hold only files promshard wrote, as a
/// pass requires.
fn check_service_dir(config: &Config, s: &Service) -> anyhow::Result<()> {
    let dir = config.out_dir.join(&s.name);
    let state = crate::store::state::ServiceState::load(&config.out_dir, &s.name);
    let owned = state.owned().into_keys().collect();
    let foreign = crate::store::files::foreign_files(&dir, &owned, &Default::default())?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(crate::pass::PassError::ForeignFiles {
        dir,
        files: foreign,
        state: crate::store::state::state_path(&config.out_dir, &s.name),
    }
    .into())
}

/// The names the first pass will give the files of `nodes` must be valid
/// and fit in a file name (a long service name and a long node name
/// together may not). A counted name is checked with a 7-digit count.
fn check_default_file_names(s: &Service, nodes: &[NodeSpec]) -> anyhow::Result<()> {
    use crate::shard::names::{FileNameArgs, check_file_name, default_file_name};
    for (i, node) in nodes.iter().enumerate() {
        let args = FileNameArgs {
            service: s.name.clone(),
            node: node.addr.clone(),
            index: i + 1,
            total: nodes.len(),
            count: 9_999_999,
            file_type: s.file_type,
        };
        let name = default_file_name(&args, s.file_naming);
        if let Err(why) = check_file_name(&name) {
            anyhow::bail!("file name {name:?} for node {} {why}", node.addr);
        }
    }
    Ok(())
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
    if !script.has_fn("file_name", 1)
        && let Err(e) = check_default_file_names(s, &nodes)
    {
        eprintln!("  {e} (service {})", s.name);
        return false;
    }
    let run = ScriptRun::new(script, sandbox);
    match run.targets(crate::pass::script_ctx(s, &nodes)) {
        Err(e) => {
            eprintln!("  {e} (service {})", s.name);
            false
        }
        Ok((groups, mut invalid)) => {
            let normalized = crate::shard::target::normalize(groups);
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

/// `promshard where`: the daemon's answer (plan in effect and what each
/// node reported), or the assignment computed from the config alone.
async fn where_command(path: &std::path::Path, args: &WhereArgs) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let api = api::DaemonApi::new(&config, std::time::Duration::from_secs(3))?;
    let base = api.base.clone();
    let answer = match ask_daemon(api, args).await {
        Ok(answer) => answer,
        Err(why) => {
            eprintln!(
                "promshard: no daemon answered at {base} ({why}); computing the assignment from {}, nothing observed",
                config.path.display()
            );
            compute_where(&config, args).await?
        }
    };
    let services = answer["services"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if services.is_empty() {
        println!("{}: not assigned by any service", args.target);
    } else {
        for s in &services {
            print_where(s);
        }
    }
    Ok(!services.is_empty())
}

/// `GET /api/v1/where` on the daemon this config runs.
async fn ask_daemon(api: api::DaemonApi, args: &WhereArgs) -> Result<serde_json::Value, String> {
    let mut path = format!(
        "/api/v1/where?target={}",
        crate::observe::prom::encode(&args.target)
    );
    if let Some(s) = &args.service {
        path.push_str(&format!("&service={}", crate::observe::prom::encode(s)));
    }
    tokio::task::spawn_blocking(move || {
        let mut resp = api.get(&path).call().map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}"))?;
        if v.get("services").is_some() {
            Ok(v)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The assignment of `args.target` by a dry-run pass of each service.
async fn compute_where(config: &Config, args: &WhereArgs) -> anyhow::Result<serde_json::Value> {
    let cache = Arc::new(ScriptCache::new());
    let sandbox = Sandbox::for_config(config);
    let services = {
        let (config, cache) = (config.clone(), Arc::clone(&cache));
        tokio::task::spawn_blocking(move || effective_services(&config, &cache).0).await?
    };
    let mut found = Vec::new();
    for service in select(config, &services, args.service.as_deref())? {
        let script = match cache.for_service(service) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("promshard: service {}: {e}", service.name);
                continue;
            }
        };
        let options = PassOptions {
            dry_run: true,
            force: true,
        };
        let cancel = CancellationToken::new();
        match static_pass(config, service, &script, &sandbox, options, &cancel, &[]).await {
            Ok(report) => {
                let input = crate::observe::WhereInput {
                    service: &service.name,
                    assignment: &report.assignment,
                    pending: report.pending_handovers(),
                    observation: None,
                };
                found.extend(crate::observe::locate(&input, args.target.trim()))
            }
            Err(e) => eprintln!("promshard: service {}: {e}", service.name),
        }
    }
    Ok(serde_json::json!({ "target": args.target.trim(), "services": found }))
}

fn print_where(s: &serde_json::Value) {
    let str_list = |v: &serde_json::Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let handovers: String = s["handover"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let (from, to) = (text(&h["from"]), text(&h["to"]));
            let (from_state, to_state) = (text(&h["from_state"]), text(&h["to_state"]));
            format!(
                ", {}",
                crate::observe::handover_text(&from, &from_state, &to, &to_state)
            )
        })
        .collect();
    println!(
        "service {}: {} on {} (file {}){}, state {}{handovers}{}",
        s["service"].as_str().unwrap_or(""),
        s["target"].as_str().unwrap_or(""),
        str_list(&s["assigned"]),
        str_list(&s["files"]),
        s["group"]
            .as_str()
            .map(|g| format!(", affinity group {g:?}"))
            .unwrap_or_default(),
        s["state"].as_str().unwrap_or("not observed"),
        s["owner"]
            .as_str()
            .map(|o| format!(", delivered by instance {o}"))
            .unwrap_or_default(),
    );
    for n in s["nodes"].as_array().into_iter().flatten() {
        print_where_node(n, s["observed_at"].is_null());
    }
}

/// One node's line of `where`: its part and what it reported.
fn print_where_node(n: &serde_json::Value, unobserved: bool) {
    let o = &n["observed"];
    let seen = if o.is_null() {
        match (n["error"].as_str(), unobserved) {
            (Some(e), _) => format!("not observed: {e}"),
            (None, true) => "not observed".into(),
            (None, false) => "not active".into(),
        }
    } else {
        format!(
            "{}, last scrape {}, series {}{}",
            o["health"].as_str().unwrap_or("?"),
            o["last_scrape"].as_str().unwrap_or("never"),
            o["series"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or("?".into()),
            o["last_error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        )
    };
    let role = serde_json::from_value(n["role"].clone())
        .unwrap_or(crate::observe::Role::NotAssigned)
        .as_str();
    println!("  {}  {role}  {seen}", n["node"].as_str().unwrap_or(""));
}
