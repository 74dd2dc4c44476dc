//! Installing promshard as a package: `--version` with the commit, the man
//! pages and completions generated from the CLI definition, and the .deb
//! that `packaging/build-deb` builds — its files, metadata, maintainer
//! scripts, and a service that runs out of the box once installed.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::{BIN, Dir, run_in, tools};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `program args…` (no shell); its output, or a panic that shows it.
#[track_caller]
fn ok(program: impl AsRef<Path>, args: &[&str]) -> Output {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git rev-parse --short HEAD` of this checkout, when git and a checkout
/// are there.
fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

#[test]
fn version_prints_the_version_and_the_commit() {
    let run = run_in(root(), &["--version"]).success();
    let expected = format!(
        "promshard {} (commit {})\n",
        promshard::build::VERSION,
        promshard::build::COMMIT
    );
    assert_eq!(run.stdout, expected);
    assert_eq!(promshard::build::VERSION, env!("CARGO_PKG_VERSION"));
    match git_head() {
        Some(head) => assert_eq!(promshard::build::COMMIT, head, "built from HEAD"),
        None => eprintln!("not a git checkout (or no git): commit not compared"),
    }
    assert_eq!(run_in(root(), &["-V"]).success().stdout, expected);
}

/// The commands of the README's CLI table (`| \`promshard NAME …`).
fn readme_commands() -> Vec<String> {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut names: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `promshard "))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect()
        })
        .collect();
    // `drain NODE` / `undrain NODE` share a row.
    if names.iter().any(|n| n == "drain") {
        names.push("undrain".into());
    }
    names
}

#[test]
fn man_pages_cover_every_command_the_readme_documents() {
    let dir = Dir::new();
    let out = dir.join("man");
    let run = run_in(
        dir.path(),
        &["generate", "man", "--out", out.to_str().unwrap()],
    )
    .success();
    let main = dir.join("man/promshard.1");
    assert_eq!(
        run.stdout.lines().next(),
        Some(main.to_str().unwrap()),
        "promshard.1 is listed first"
    );
    let commands = readme_commands();
    assert!(commands.len() >= 8, "README's CLI table: {commands:?}");
    let page = fs::read_to_string(&main).expect("promshard.1");
    for name in &commands {
        let sub = dir.join(format!("man/promshard-{name}.1"));
        assert!(
            sub.is_file(),
            "no man page for `promshard {name}`: {:?}",
            dir.tree()
        );
        assert!(
            page.contains(&format!("promshard\\-{name}(1)")),
            "promshard.1 lacks {name}"
        );
        assert!(run.stdout.contains(sub.to_str().unwrap()), "{}", run.stdout);
    }
    for section in [".SH \"EXIT STATUS\"", ".SH FILES", ".SH VERSION"] {
        assert!(
            page.contains(section),
            "promshard.1 lacks {section}:\n{page}"
        );
    }
    assert!(
        page.contains(promshard::build::COMMIT),
        "the version names the commit"
    );
    assert!(!dir.join("man/promshard-help.1").exists() && !page.contains("promshard\\-help"));
    assert!(
        !dir.join("man/promshard-generate.1").exists(),
        "generate is hidden"
    );
    let stdout = run_in(dir.path(), &["generate", "man"]).success().stdout;
    assert_eq!(stdout, page, "without --out, promshard.1 goes to stdout");
}

/// What the bash completion of `promshard` offers for `words` (the last
/// one being completed).
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        r#"source "$1"; COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _promshard promshard "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#,
        cword = words.len() - 1,
    );
    let out = ok("bash", &["-c", &program, "bash", script.to_str().unwrap()]);
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish_and_bash_completes_commands() {
    let dir = Dir::new();
    for (shell, file) in [
        ("bash", "promshard.bash"),
        ("zsh", "_promshard"),
        ("fish", "promshard.fish"),
    ] {
        let out = dir.join("c");
        let args = [
            "generate",
            "completions",
            shell,
            "--out",
            out.to_str().unwrap(),
        ];
        let run = run_in(dir.path(), &args).success();
        let path = dir.join("c").join(file);
        assert_eq!(run.stdout.trim(), path.to_str().unwrap());
        let text = fs::read_to_string(&path).expect("completion file");
        assert!(text.contains("undrain"), "{shell} completion lacks undrain");
    }
    let bash = dir.join("c/promshard.bash");
    ok("bash", &["-n", bash.to_str().unwrap()]);
    assert_eq!(bash_complete(&bash, &["promshard", "ch"]), ["check"]);
    let plan = bash_complete(&bash, &["promshard", "plan", "--s"]);
    assert_eq!(plan, ["--service"]);
    let stdout = run_in(dir.path(), &["generate", "completions", "bash"])
        .success()
        .stdout;
    assert_eq!(stdout, fs::read_to_string(&bash).unwrap());
}

#[test]
fn a_bad_shell_is_a_usage_error_naming_the_choices() {
    let dir = Dir::new();
    let run = run_in(dir.path(), &["generate", "completions", "tcsh"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("tcsh") && run.stderr.contains("bash"),
        "{}",
        run.stderr
    );
}

// The package.

/// Files the .deb must hold, as `dpkg-deb -c` lists them.
const PACKAGED: &[&str] = &[
    "./usr/bin/promshard",
    "./usr/lib/systemd/system/promshard.service",
    "./etc/promshard/promshard.yaml",
    "./etc/promshard/scripts/node_exporter.rhai",
    "./usr/share/promshard/playbooks/push_sd.yml",
    "./usr/share/promshard/playbooks/push_rules.yml",
    "./usr/share/promshard/playbooks/library/promshard_sd.py",
    "./usr/share/promshard/scripts/examples/json_file.rhai",
    "./usr/share/promshard/scripts/examples/static_list.rhai",
    "./usr/share/man/man1/promshard.1.gz",
    "./usr/share/man/man1/promshard-run.1.gz",
    "./usr/share/bash-completion/completions/promshard",
    "./usr/share/zsh/vendor-completions/_promshard",
    "./usr/share/fish/vendor_completions.d/promshard.fish",
    "./usr/share/doc/promshard/README.md",
    "./usr/share/doc/promshard/copyright",
];

/// dpkg-deb: `PROMSHARD_DPKG_DEB` or on `PATH`.
fn dpkg_deb() -> PathBuf {
    tools::locate("dpkg-deb", "PROMSHARD_DPKG_DEB")
        .expect("dpkg-deb not found: apt-get install dpkg (`bash .ci/test` does)")
}

/// `bash packaging/build-deb --fast`; the path of the .deb it made.
fn build_deb() -> PathBuf {
    let started = std::time::Instant::now();
    let script = root().join("packaging/build-deb");
    let out = ok("bash", &[script.to_str().unwrap(), "--fast"]);
    let deb = PathBuf::from(stdout(&out).lines().last().unwrap_or("").trim());
    assert!(
        deb.is_file(),
        "build-deb printed no .deb: {:?}",
        stdout(&out)
    );
    let size = fs::metadata(&deb).unwrap().len();
    eprintln!(
        "built {} ({size} bytes) in {:?}",
        deb.display(),
        started.elapsed()
    );
    deb
}

/// Metadata, file list and maintainer scripts, read with dpkg-deb.
fn check_contents(deb: &Path) {
    let deb = deb.to_str().unwrap();
    let dpkg_deb = dpkg_deb();
    let field = |name: &str| {
        stdout(&ok(&dpkg_deb, &["-f", deb, name]))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "promshard");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    for dep in ["libc6", "adduser"] {
        assert!(depends.contains(dep), "Depends: {depends} lacks {dep}");
    }
    let listing = stdout(&ok(&dpkg_deb, &["-c", deb]));
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in PACKAGED {
        assert!(
            files.contains(want),
            "{want} is not in the package:\n{listing}"
        );
    }
    let control = Dir::new();
    ok(&dpkg_deb, &["-e", deb, control.path().to_str().unwrap()]);
    let read = |name: &str| String::from_utf8(control.read(name)).unwrap();
    assert!(
        read("conffiles")
            .lines()
            .any(|l| l == "/etc/promshard/promshard.yaml"),
        "conffiles: {}",
        read("conffiles")
    );
    assert!(read("postinst").contains("adduser --quiet --system --group"));
    assert!(
        read("postinst").contains("deb-systemd-helper"),
        "cargo-deb's systemd part"
    );
    assert!(read("postrm").contains("rm -rf /var/lib/promshard"));
}

/// Where the package's files are: the system after `dpkg -i` (purged when
/// dropped), or a scratch root from `dpkg -x` when this is not root or a
/// promshard package is already installed (its maintainer scripts do not run).
enum Installed {
    System { purged: bool },
    Unpacked(Dir),
}

impl Installed {
    fn new(deb: &Path) -> Installed {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let is_root = unsafe { libc::geteuid() } == 0;
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "promshard"])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        if is_root && !status.contains("installed") {
            ok("dpkg", &["-i", deb.to_str().unwrap()]);
            return Installed::System { purged: false };
        }
        eprintln!(
            "not installing with dpkg -i (root: {is_root}, installed: {status:?}); unpacking with dpkg -x, maintainer scripts not run"
        );
        let dir = Dir::new();
        ok(
            dpkg_deb(),
            &["-x", deb.to_str().unwrap(), dir.path().to_str().unwrap()],
        );
        Installed::Unpacked(dir)
    }

    /// `abs` (absolute) where the package put it.
    fn path(&self, abs: &str) -> PathBuf {
        match self {
            Installed::System { .. } => PathBuf::from(abs),
            Installed::Unpacked(dir) => dir.join(abs.trim_start_matches('/')),
        }
    }

    fn purge(&mut self) {
        if let Installed::System { purged } = self
            && !*purged
        {
            *purged = true;
            ok("dpkg", &["--purge", "promshard"]);
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Installed::System { purged: false } = self {
            let _ = Command::new("dpkg").args(["--purge", "promshard"]).status();
        }
    }
}

/// The installed binary, man page, completion and unit work.
fn check_installed_files(pkg: &Installed) {
    let bin = pkg.path("/usr/bin/promshard");
    let version = stdout(&ok(&bin, &["--version"]));
    assert_eq!(
        version,
        stdout(&ok(BIN, &["--version"])),
        "the packaged binary is this build"
    );
    let config = pkg.path("/etc/promshard/promshard.yaml");
    ok(&bin, &["-c", config.to_str().unwrap(), "check"]);

    let man = tools::locate("man", "PROMSHARD_MAN")
        .expect("man not found: apt-get install man-db (`bash .ci/test` does)");
    let page = pkg.path("/usr/share/man/man1/promshard.1.gz");
    let out = ok(&man, &["--warnings", "-l", page.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        text.contains("EXIT STATUS") && text.contains("promshard-rendezvous(1)"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "man warns: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bash = pkg.path("/usr/share/bash-completion/completions/promshard");
    ok("bash", &["-n", bash.to_str().unwrap()]);
    assert_eq!(bash_complete(&bash, &["promshard", "und"]), ["undrain"]);

    let unit = pkg.path("/usr/lib/systemd/system/promshard.service");
    let text = fs::read_to_string(&unit).unwrap();
    for line in [
        "User=promshard",
        "ExecStart=/usr/bin/promshard -c /etc/promshard/promshard.yaml run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/promshard",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }
    match (tools::on_path("systemd-analyze"), pkg) {
        (Some(analyze), Installed::System { .. }) => {
            ok(analyze, &["verify", unit.to_str().unwrap()]);
        }
        (None, _) => eprintln!("systemd-analyze not found: unit not verified"),
        (Some(_), Installed::Unpacked(_)) => {
            eprintln!("unit not verified: its ExecStart is only installed by dpkg -i")
        }
    }
}

/// After `dpkg -i`: the user, its state directory, and one pass of the
/// shipped config run as that user.
fn check_service_user() {
    let passwd = stdout(&ok("getent", &["passwd", "promshard"]));
    assert!(passwd.contains(":/var/lib/promshard:"), "home: {passwd}");
    let owner = stdout(&ok("stat", &["-c", "%U:%G %a", "/var/lib/promshard"]));
    assert_eq!(owner.trim(), "promshard:promshard 750");
    let config = "/etc/promshard/promshard.yaml";
    let as_user = ["-u", "promshard", "--", "/usr/bin/promshard", "-c", config];
    let once: Vec<&str> = as_user.iter().copied().chain(["once"]).collect();
    ok("runuser", &once);
    let file = "/var/lib/promshard/prom/127.0.0.1:9090/node_exporter.json";
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(text.contains("127.0.0.1:9100"), "{file}: {text}");
}

#[test]
#[ignore = "needs cargo-deb, dpkg"]
fn the_deb_installs_a_service_that_runs_out_of_the_box() {
    let deb = build_deb();
    check_contents(&deb);
    let mut pkg = Installed::new(&deb);
    check_installed_files(&pkg);
    if let Installed::System { .. } = pkg {
        check_service_user();
        pkg.purge();
        for gone in ["/usr/bin/promshard", "/etc/promshard", "/var/lib/promshard"] {
            assert!(!Path::new(gone).exists(), "{gone} is left after purge");
        }
    }
}
