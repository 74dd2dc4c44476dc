//! `promshard generate`: the man pages and shell completions, made from the
//! clap definition the parser uses, so they list exactly the commands and
//! options the binary takes. Hidden from `--help`: it is for packagers
//! (`packaging/build-deb`) and for installing completions by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

/// Arguments of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

/// What `generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Man pages: promshard.1, and promshard-COMMAND.1 for each command.
    Man {
        /// Write every page into this directory (made if missing); without
        /// it, promshard.1 goes to stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The completion script of a shell.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
        /// Write it into this directory (made if missing), named as the
        /// shell expects (promshard.bash, _promshard, promshard.fish, …);
        /// without it, to stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// DESCRIPTION of promshard.1 (`--help` keeps the one-line about).
const DESCRIPTION: &str = "promshard spreads the scrape targets of a fleet over a pool of Prometheus servers. For each service (a scrape job) a Rhai script returns the targets; promshard places every target on the live Prometheus nodes by rendezvous hashing, writes one file_sd file per node and delivers it (a local copy, Ansible, or an http_sd endpoint the node pulls), on a cron schedule per service and at once when a script, the config or the set of live nodes changes. A bad script, an inventory outage or a broken config keeps the last good files.";

/// The command the man pages describe: no `help` subcommand (it has no
/// page of its own), and a longer description.
fn man_command() -> clap::Command {
    Cli::command()
        .disable_help_subcommand(true)
        .long_about(DESCRIPTION)
}

/// Sections of promshard.1 that clap has no place for (roff).
const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Failure: a bad config, a service whose pass failed (the other services still ran), a delivery that failed, or a rule file refused.
.TP
\fB2\fR
Usage error.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter, e.g. \fBRUST_LOG=promshard=debug\fR.
.TP
\fBNO_COLOR\fR
When set, logs are never coloured.
.SH FILES
.TP
\fI/etc/promshard/promshard.yaml\fR
The config file of the packaged service (\fBpromshard.service\fR); \fBsystemctl reload promshard\fR re-reads it (SIGHUP), keeping the running one when the new one is invalid.
.TP
\fI/var/lib/promshard\fR
The packaged service's state and file_sd output.
.TP
\fI/usr/share/promshard\fR
Example target scripts and the Ansible playbooks.
"#;

/// Run `generate`; what was written goes to stdout (with `--out`, the
/// paths of the files).
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    match &args.what {
        Generated::Man { out: None } => main_page(&mut std::io::stdout().lock())?,
        Generated::Man { out: Some(dir) } => {
            for path in man_pages(dir)? {
                println!("{}", path.display());
            }
        }
        Generated::Completions { shell, out: None } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "promshard",
                &mut std::io::stdout(),
            );
        }
        Generated::Completions {
            shell,
            out: Some(dir),
        } => {
            make_dir(dir)?;
            let path = clap_complete::generate_to(*shell, &mut Cli::command(), "promshard", dir)
                .with_context(|| format!("writing {shell} completions into {}", dir.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Every page into `dir`: clap_mangen's one per command, then promshard.1
/// replaced by [`main_page`]. The paths written, promshard.1 first.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    make_dir(dir)?;
    let context = || format!("writing man pages into {}", dir.display());
    clap_mangen::generate_to(man_command(), dir).with_context(context)?;
    let main = dir.join("promshard.1");
    let mut file = std::fs::File::create(&main).with_context(context)?;
    main_page(&mut file).with_context(context)?;
    file.flush().with_context(context)?;
    let mut pages = vec![main.clone()];
    for command in Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
    {
        let page = dir.join(format!("promshard-{}.1", command.get_name()));
        anyhow::ensure!(page.is_file(), "clap_mangen wrote no {}", page.display());
        pages.push(page);
    }
    Ok(pages)
}

/// promshard.1: clap's sections, then exit status, environment and files.
fn main_page(w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(man_command());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(MAN_SECTIONS.as_bytes())?;
    man.render_version_section(w)
}
