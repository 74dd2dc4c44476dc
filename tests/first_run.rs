//! What a newcomer meets on a first run: paths, messages, logs and help
//! texts of the real binary, each as the README promises it.

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use util::{BIN, Dir, config_yaml, nodes, run_in, strs};

/// A one-service site in `<dir>/site` whose push copies to `dest`.
fn site(dir: &Dir, dest: &str) {
    let n = nodes(3);
    let push = format!("push: {{kind: local, dest: \"{dest}\"}}");
    dir.write(
        "site/promshard.yaml",
        config_yaml(&strs(&n), &[("svc", "scripts/svc.rhai", &push)]),
    );
    let targets: Vec<String> = (1..=30).map(|i| format!("\"10.0.0.{i}:9100\"")).collect();
    dir.write(
        "site/scripts/svc.rhai",
        format!("fn targets(ctx) {{ [{}] }}", targets.join(", ")),
    );
}

#[test]
fn a_config_named_through_dotdot_delivers_with_relative_destinations() {
    let dir = Dir::new();
    site(&dir, "prom/{node}/sd.json");
    fs::create_dir_all(dir.join("elsewhere")).expect("mkdir");
    run_in(
        &dir.join("elsewhere"),
        &["-c", "../site/promshard.yaml", "once"],
    )
    .success();
    for node in nodes(3) {
        let file = dir.join(format!("site/prom/{node}/sd.json"));
        assert!(file.is_file(), "{} not delivered", file.display());
    }
}

#[test]
fn a_failed_delivery_is_in_the_text_log_with_node_and_reason() {
    let dir = Dir::new();
    dir.write("site/blocker", "a file, not a directory");
    site(&dir, "blocker/{node}/sd.json");
    let run = run_in(&dir.join("site"), &["once"]).failure();
    let failures: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("delivery failed"))
        .collect();
    assert_eq!(failures.len(), 3, "one line per node:\n{}", run.stderr);
    for line in failures {
        assert!(
            line.contains("node=127.0.0.1:")
                && line.contains("result=failed")
                && line.contains("error=")
                && line.contains("Not a directory"),
            "{line}"
        );
    }
    let summary = run
        .stderr
        .lines()
        .find(|l| l.contains("pass done"))
        .unwrap_or_else(|| panic!("no summary:\n{}", run.stderr));
    assert!(
        summary.contains("deliveries=3")
            && summary.contains("delivered=0")
            && summary.contains("delivery_failed=3"),
        "attempted vs succeeded: {summary}"
    );
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = Dir::new();
    site(&dir, "prom/{node}/sd.json");
    let out = Command::new(BIN)
        .args(["once"])
        .current_dir(dir.join("site"))
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .output()
        .expect("run promshard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass done"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a pipe:\n{stderr:?}"
    );
}

#[test]
fn a_yaml_error_names_its_position_once() {
    let dir = Dir::new();
    dir.config("out_dir: out\nservices:\n  - name: a\n    bogus_key: 1\n");
    let run = dir.run(&["check"]).failure();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("bogus_key"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(line.matches("line 4").count(), 1, "{line}");
    assert_eq!(
        line,
        "promshard.yaml: services[0] \"a\": unknown key \"bogus_key\" (line 4); expected one of name, script, source, schedule, nodes, node_script, replicas, file_type, file_naming, port, push, ring, max_drop_ratio, max_move_ratio, resync_interval, health, observe, weights, affinity, shard_label, handover, handover_timeout, rules"
    );
}

/// A misspelt key is answered with the key meant, and a value of the
/// wrong type names the service, as every other config error does.
#[test]
fn config_mistakes_name_the_service_and_the_key_meant() {
    let dir = Dir::new();
    let n = nodes(2);
    for (extra, want) in [
        (
            "replica: 2",
            "promshard.yaml: services[0] \"svc\": unknown key \"replica\" (line 8), did you mean \"replicas\"?",
        ),
        (
            "replicas: two",
            "promshard.yaml: services[0] \"svc\": replicas: expected an integer, got \"two\" (line 8 column 15)",
        ),
    ] {
        dir.config(&config_yaml(
            &strs(&n),
            &[("svc", "scripts/svc.rhai", extra)],
        ));
        let run = dir.run(&["check"]).failure();
        assert_eq!(run.code, Some(1));
        assert!(
            run.stderr.lines().any(|l| l == want),
            "want {want}\n{}",
            run.stderr
        );
    }
}

/// `check` says which `.rhai` files became services without being in the
/// config, with their files.
#[test]
fn check_lists_the_drop_in_services_it_picked_up() {
    let dir = Dir::new();
    let n = nodes(2);
    dir.config(&config_yaml(&strs(&n), &[("svc", "scripts/svc.rhai", "")]));
    dir.write("scripts/svc.rhai", "fn targets(ctx) { [] }\n");
    let dropin = format!(
        "fn service() {{ #{{ nodes: [\"{}\"] }} }}\nfn targets(ctx) {{ [] }}\n",
        n[0]
    );
    dir.write("scripts/mysql.rhai", &dropin);
    dir.write("scripts/blackbox.rhai", &dropin);
    let run = dir.run(&["check"]).success();
    run.stdout_has(&[
        "drop-in services from scripts/: blackbox (scripts/blackbox.rhai), mysql (scripts/mysql.rhai)",
    ]);
    fs::remove_file(dir.join("scripts/mysql.rhai")).expect("rm");
    fs::remove_file(dir.join("scripts/blackbox.rhai")).expect("rm");
    let run = dir.run(&["check"]).success();
    assert!(
        !run.stdout.contains("drop-in services from"),
        "{}",
        run.stdout
    );
}

/// The simulator reads no config, so it does not offer `-c`, and refuses
/// one given before it rather than ignore it; `ring` still finds it.
#[test]
fn rendezvous_takes_no_config_and_ring_is_its_alias() {
    let cwd = std::env::temp_dir();
    let help = run_in(&cwd, &["rendezvous", "--help"]).success();
    assert!(!help.stdout.contains("--config"), "{}", help.stdout);
    let bad = run_in(&cwd, &["-c", "x.yaml", "rendezvous", "--nodes", "2"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("reads no config file; leave out -c x.yaml"),
        "{}",
        bad.stderr
    );
    let args = ["--nodes", "2", "--targets", "100"];
    for name in ["rendezvous", "ring"] {
        let full: Vec<&str> = std::iter::once(name).chain(args).collect();
        run_in(&cwd, &full)
            .success()
            .stdout_has(&["rendezvous: 2 nodes, 100 targets"]);
    }
    // Every other command takes -c before or after its name.
    let dir = Dir::new();
    site(&dir, "prom/{node}/sd.json");
    for args in [
        &["-c", "site/promshard.yaml", "check"][..],
        &["check", "-c", "site/promshard.yaml"],
    ] {
        run_in(dir.path(), args).success();
    }
}

#[test]
fn plan_offers_no_force_and_reports_no_delivery() {
    let dir = Dir::new();
    site(&dir, "prom/{node}/sd.json");
    let site = dir.join("site");
    let help = run_in(&site, &["plan", "--help"]).success();
    assert!(!help.stdout.contains("--force"), "{}", help.stdout);
    assert!(
        run_in(&site, &["once", "--help"])
            .success()
            .stdout
            .contains("--force")
    );

    let plan = run_in(&site, &["plan", "--json"]).success().json();
    let service = &plan["services"][0];
    assert_eq!(service["dry_run"], true, "{service}");
    assert_eq!(service["targets"], 30, "{service}");
    for key in ["departed", "delivery_runs_s"] {
        assert!(service.get(key).is_none(), "{key} in a dry run: {service}");
    }
    let node = &service["nodes"][0];
    assert!(node.get("count").is_some(), "{node}");
    for key in ["delivered", "attempts", "result"] {
        assert!(node.get(key).is_none(), "{key} in a dry run: {node}");
    }
    let once = run_in(&site, &["once", "--json"]).success().json();
    assert!(
        once["services"][0]["nodes"][0].get("attempts").is_some(),
        "once still reports deliveries: {once}"
    );
}

#[test]
fn once_prints_the_per_node_table() {
    let dir = Dir::new();
    site(&dir, "prom/{node}/sd.json");
    let run = run_in(&dir.join("site"), &["once"]).success();
    assert!(
        run.stdout.contains("service svc: 30 targets"),
        "{}",
        run.stdout
    );
    let header = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("NODE"))
        .unwrap_or_else(|| panic!("no table:\n{}", run.stdout));
    assert!(
        header.contains("TARGETS") && header.contains("RESULT"),
        "{header}"
    );
    let mut total = 0;
    for node in nodes(3) {
        let row = run
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{}", run.stdout));
        let count: usize = row
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{row}"));
        assert!(row.contains("changed"), "first delivery: {row}");
        total += count;
    }
    assert_eq!(total, 30, "{}", run.stdout);
}

#[test]
fn check_from_another_directory_names_the_path_it_tried() {
    let dir = Dir::new();
    let run = dir.run(&["check"]).failure();
    let tried = dir.join("promshard.yaml");
    run.stderr_has(&[&format!("cannot read {}", tried.display()), "-c FILE"]);
}

/// The README's sample summary line has exactly the fields the binary logs,
/// every file of the repository it names exists, and it names nothing
/// outside the repository.
#[test]
fn the_readme_shows_real_output_and_stays_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    for outside in ["../shared", "DESIGN.md", "STYLE.md"] {
        assert!(!readme.contains(outside), "README refers to {outside}");
    }
    let named: Vec<&str> = readme
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            [
                "src/",
                "tests/",
                "scripts/",
                "playbooks/",
                "examples/",
                "packaging/",
                "benches/",
                ".ci/",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        // Paths, not message excerpts or templates.
        .filter(|t| !t.contains([' ', ':', '<', '{', '*']))
        .collect();
    assert!(named.len() > 5, "{named:?}");
    for path in named {
        assert!(
            root.join(path).exists(),
            "README names {path}, which does not exist"
        );
    }
    let sample = readme
        .lines()
        .find(|l| l.contains("msg=\"pass done\" service="))
        .expect("README shows a pass summary line");

    // The shipped config, run once in a copy of the repository's files.
    let dir = Dir::new();
    for rel in [
        "promshard.yaml",
        "scripts/node_exporter.rhai",
        "examples/targets.json",
    ] {
        dir.write(rel, fs::read(root.join(rel)).expect(rel));
    }
    let run = dir.run(&["once"]).success();
    let real = run
        .stderr
        .lines()
        .find(|l| l.contains("msg=\"pass done\" service="))
        .unwrap_or_else(|| panic!("no summary:\n{}", run.stderr));
    let keys = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| !k.contains('.') && !k.contains(':'))
            .collect()
    };
    assert_eq!(keys(sample), keys(real), "README:\n{sample}\nreal:\n{real}");
    let counts = |line: &str| -> Value {
        let per: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.starts_with("127.0.0.1:"))
            .collect();
        Value::from(per.join(" "))
    };
    assert_eq!(counts(sample), counts(real), "per-node counts differ");
}

/// Without prometheus on PATH and without root, the test command stops at
/// once with one line that says what to install (it never half-runs).
#[test]
fn the_test_command_without_prometheus_and_root_says_what_to_install() {
    use std::os::unix::fs::symlink;
    let dir = Dir::new();
    // A PATH with the few tools the script needs before it looks for
    // prometheus, and no prometheus.
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("bin dir");
    for tool in ["bash", "id", "dirname"] {
        let real = util::tools::on_path(tool).unwrap_or_else(|| panic!("{tool} not on PATH"));
        symlink(real, bin.join(tool)).expect("symlink");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/test");
    let copy = dir.join(".ci/test");
    dir.write(".ci/test", fs::read(&script).expect(".ci/test"));
    // As root, drop to nobody (setpriv, util-linux); otherwise run as is.
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new(util::tools::on_path("setpriv").expect("setpriv (util-linux)"));
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(bin.join("bash"));
        c
    } else {
        Command::new(bin.join("bash"))
    };
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path().to_path_buf(), dir.join(".ci"), bin.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    let started = std::time::Instant::now();
    let out = cmd
        .arg(&copy)
        .env_clear()
        .env("PATH", &bin)
        .current_dir(dir.path())
        .output()
        .expect("run .ci/test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("prometheus not found")
            && lines[0].contains("apt-get install prometheus"),
        "{stderr}"
    );
}

/// Start-up takes only what `check` and a reload take: a service whose
/// script is missing or unreadable stops the start with one line naming the
/// script, why, and the service, and nothing is written.
#[test]
fn run_refuses_to_start_with_a_missing_or_unreadable_script() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use util::child::{ChildGuard, poll};

    let dir = Dir::new();
    site(&dir, "delivered/{node}");
    let unreadable = dir.write("site/scripts/locked.rhai", "fn targets(ctx) { [] }");
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    // Running as root reads a mode-000 file anyway: then only the missing
    // script is checked.
    let locked = fs::read(&unreadable).is_err();
    let mut config = fs::read_to_string(dir.join("site/promshard.yaml")).unwrap();
    config.push_str(
        "  - name: ghost\n    script: scripts/ghost.rhai\n    nodes: [\"127.0.0.1:9091\"]\n",
    );
    if locked {
        config.push_str(
            "  - name: locked\n    script: scripts/locked.rhai\n    nodes: [\"127.0.0.1:9091\"]\n",
        );
    }
    dir.write("site/promshard.yaml", config);
    let cfg = dir.join("site/promshard.yaml");
    let child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new("promshard run", child);
    let status = poll("promshard run to exit", Duration::from_secs(10), || {
        guard.exited().ok_or_else(|| "still running".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(1), "{status:?}");
    let mut stderr = String::new();
    let mut pipe = guard.child.stderr.take().unwrap();
    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    let ghost = dir.join("site/scripts/ghost.rhai");
    assert!(stderr.contains("config rejected, not starting"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: cannot read script: no such file",
            ghost.display()
        )) && stderr.contains("(service ghost)"),
        "{stderr}"
    );
    if locked {
        assert!(
            stderr.contains("locked.rhai: cannot read script: Permission denied")
                && stderr.contains("(service locked)"),
            "{stderr}"
        );
    }
    assert!(!dir.join("site/out").exists(), "nothing is written");
}

/// The README's text between `### CLI` and the next heading.
fn readme_cli_section() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = readme.find("\n### CLI\n").expect("README has ### CLI");
    let rest = &readme[start + 9..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The long options (`--x`) a help text offers, but `--help`/`--version`.
fn long_flags(help: &str) -> Vec<String> {
    help.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches([',', '.'])
                .split(['=', '<', '['])
                .next()
                .unwrap_or("")
        })
        .filter(|f| !f.is_empty() && !["help", "version"].contains(f))
        .map(|f| format!("--{f}"))
        .collect()
}

/// Every command `promshard --help` lists, and every long option of each,
/// is in the README's CLI section, so the table cannot fall behind.
#[test]
fn the_readme_cli_section_names_every_command_and_flag() {
    let cwd = std::env::temp_dir();
    let cli = readme_cli_section();
    let top = run_in(&cwd, &["--help"]).success().stdout.clone();
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .and_then(|c| c.split("Options:").next())
        .expect("a Commands: list")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 8, "{commands:?}");
    let mut missing = Vec::new();
    for flag in long_flags(&top) {
        if !cli.contains(&flag) {
            missing.push(format!("promshard {flag}"));
        }
    }
    for command in &commands {
        if !cli.contains(&format!("promshard {command}")) {
            missing.push(format!("promshard {command}"));
        }
        let help = run_in(&cwd, &[command, "--help"]).success().stdout.clone();
        for flag in long_flags(&help) {
            if !cli.contains(&flag) {
                missing.push(format!("promshard {command} {flag}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in README's CLI section: {missing:?}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a markdown text (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every relative link of README.md, CONTRIBUTING.md and docs/*.md points
/// at a file that exists, and every `#anchor` at a heading there.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    let docs = fs::read_dir(root.join("docs")).expect("docs/");
    pages.extend(
        docs.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        for link in text.split("](").skip(1).filter_map(|r| r.split(')').next()) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("dir").join(file)
            };
            let name = page
                .strip_prefix(root)
                .unwrap_or(page)
                .display()
                .to_string();
            if !target.exists() {
                broken.push(format!("{name}: {link}: no such file"));
            } else if !fragment.is_empty() {
                let text = fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == fragment) {
                    broken.push(format!("{name}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} links found");
    assert!(broken.is_empty(), "{broken:#?}");
}
