//! Real OpenSSH servers on loopback, for delivery over
//! `ansible_connection: ssh`.
//!
//! [`SshHosts::start`] starts N `sshd` (`PROMSHARD_SSHD`, else `PATH`, else
//! `/usr/sbin`, where Debian puts it), each on its own `127.x.y.z` address
//! and a probed free port, with its own generated host key, as the current
//! user, with key auth only. The client side is one generated key, a
//! `known_hosts` made from the host keys, and an `ssh_config` that maps
//! each address to its port and insists on the known host key
//! (`StrictHostKeyChecking yes`); Ansible uses it through
//! `ansible_ssh_common_args: -F <ssh_config>` ([`SshHosts::ansible_vars`]).
//!
//! A host can be stopped (its sshd and every session it forked killed, as
//! when the machine goes down), started again with the same key and port,
//! or given a new host key. Everything is killed and reaped on drop.

use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::child::ChildGuard;

/// Distinct addresses for every host started by this test process.
static NEXT_HOST: AtomicU32 = AtomicU32::new(0);

/// `sshd`: `PROMSHARD_SSHD`, else `PATH`, else `/usr/sbin/sshd`.
pub fn sshd() -> PathBuf {
    if let Some(p) = super::tools::locate("sshd", "PROMSHARD_SSHD") {
        return p;
    }
    let sbin = PathBuf::from("/usr/sbin/sshd");
    assert!(
        sbin.is_file(),
        "sshd not found: not on PATH, not in /usr/sbin, and PROMSHARD_SSHD is not set; install it (apt-get install openssh-server) or run `bash .ci/test`"
    );
    sbin
}

/// One sshd.
pub struct SshHost {
    /// Its loopback address, e.g. `127.23.0.2`.
    pub addr: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<ChildGuard>,
}

impl SshHost {
    fn host_key(&self) -> PathBuf {
        self.dir.join("host_key")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// The `known_hosts` line of its current host key.
    fn known_hosts_line(&self) -> String {
        let public = fs::read_to_string(self.dir.join("host_key.pub")).expect("host key");
        let mut words = public.split_whitespace();
        let (kind, key) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        format!("[{}]:{} {kind} {key}\n", self.addr, self.port)
    }

    /// What sshd logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// CPU time (user + system, in clock ticks) of everything its sshd ran
    /// and reaped: connections, shells, modules. `None` when it is down.
    pub fn sessions_cpu_ticks(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.pid();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, cutime and cstime are fields 16 and 17.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
        Some(tick(16)? + tick(17)?)
    }

    /// Whether its sshd has no connection open (every session reaped).
    pub fn is_idle(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        let pid = child.pid();
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .is_ok_and(|c| c.trim().is_empty())
    }

    /// Whether its sshd is running.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

/// N sshd and the client files that reach them.
pub struct SshHosts {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pub hosts: Vec<SshHost>,
}

impl SshHosts {
    /// Start `n` sshd, each on its own loopback address; waits until each
    /// accepts connections.
    pub fn start(n: usize) -> SshHosts {
        let tmp = tempfile::Builder::new()
            .prefix("promshard-sshd-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().to_path_buf();
        keygen(&root.join("client_key"));
        fs::copy(root.join("client_key.pub"), root.join("authorized_keys"))
            .expect("authorized_keys");
        privsep_dir();
        let pid = std::process::id();
        let hosts = (0..n)
            .map(|_| {
                let k = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
                let addr = format!("127.{}.{}.{}", 20 + pid % 200, k / 250, k % 250 + 2);
                let dir = root.join(&addr);
                fs::create_dir_all(&dir).expect("host dir");
                keygen(&dir.join("host_key"));
                SshHost {
                    addr,
                    port: 0,
                    dir,
                    child: None,
                }
            })
            .collect();
        let mut s = SshHosts {
            _tmp: tmp,
            root,
            hosts,
        };
        for i in 0..n {
            s.start_host(i);
        }
        s.write_client_files();
        s
    }

    /// The `ssh_config` every client uses (`ssh -F`).
    pub fn ssh_config(&self) -> PathBuf {
        self.root.join("ssh_config")
    }

    /// The fixture's directory (keys, configs, logs).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Node names (`<addr>:9090`: the port is Prometheus's, not SSH's).
    pub fn nodes(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}:9090", h.addr))
            .collect()
    }

    /// The push vars that make Ansible reach these hosts over real SSH.
    pub fn ansible_vars(&self) -> serde_json::Value {
        serde_json::json!({
            "ansible_connection": "ssh",
            "ansible_ssh_common_args": format!("-F {}", self.ssh_config().display()),
        })
    }

    /// Stop host `i` as if the machine went down: its sshd and every
    /// session it forked are killed, the listener reaped.
    pub fn stop_host(&mut self, i: usize) {
        if let Some(mut guard) = self.hosts[i].child.take() {
            promshard::push::ansible::kill_tree(guard.pid());
            guard.kill();
        }
    }

    /// (Re)start host `i` on its address, keeping its port once it has one.
    pub fn start_host(&mut self, i: usize) {
        let bin = sshd();
        let authorized = self.root.join("authorized_keys");
        let host = &mut self.hosts[i];
        let mut last = String::new();
        for _ in 0..5 {
            let port = if host.port != 0 {
                host.port
            } else {
                TcpListener::bind((host.addr.as_str(), 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap_or_else(|e| panic!("binding {}:0: {e}", host.addr))
            };
            let config = host.dir.join("sshd_config");
            fs::write(
                &config,
                sshd_config(&host.addr, port, &host.host_key(), &authorized),
            )
            .expect("sshd_config");
            let log = fs::File::create(host.log()).expect("sshd log");
            let mut cmd = Command::new(&bin);
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0);
            // A killed test or bench leaves no sshd behind.
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut guard = ChildGuard::new(format!("sshd {}:{port}", host.addr), child);
            match wait_listening(&host.addr, port, &mut guard) {
                Ok(()) => {
                    host.port = port;
                    host.child = Some(guard);
                    return;
                }
                Err(e) => {
                    guard.kill();
                    last = format!("{e}; log: {}", host.log_text());
                    if host.port != 0 {
                        // The old port is taken: nothing to retry with.
                        break;
                    }
                }
            }
        }
        panic!("sshd on {} did not start: {last}", host.addr);
    }

    /// Give host `i` a new host key (as a reinstalled machine, or a man in
    /// the middle, would have) and restart it; `known_hosts` keeps the old.
    pub fn change_host_key(&mut self, i: usize) {
        self.stop_host(i);
        let key = self.hosts[i].host_key();
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        keygen(&key);
        self.start_host(i);
    }

    fn write_client_files(&self) {
        let known = self.root.join("known_hosts");
        let lines: String = self.hosts.iter().map(SshHost::known_hosts_line).collect();
        fs::write(&known, lines).expect("known_hosts");
        // ssh takes the first value it finds: per-host blocks come first.
        let mut config = String::new();
        for h in &self.hosts {
            let _ = writeln!(config, "Host {}\n  Port {}", h.addr, h.port);
        }
        let _ = write!(
            config,
            "Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  CheckHostIP no\n  BatchMode yes\n  ConnectTimeout 10\n",
            key = self.root.join("client_key").display(),
            known = known.display(),
        );
        fs::write(self.ssh_config(), config).expect("ssh_config");
    }
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.stop_host(i);
        }
    }
}

fn sshd_config(addr: &str, port: u16, host_key: &Path, authorized: &Path) -> String {
    // Root in CI: key logins only. StrictModes off because the keys live
    // in a temp dir; no PAM, no passwords.
    format!(
        "ListenAddress {addr}:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nMaxStartups 200\nMaxSessions 50\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
        host_key.display(),
        authorized.display()
    )
}

/// An ed25519 key pair at `path` and `path.pub`, no passphrase.
fn keygen(path: &Path) {
    let bin = super::tools::locate("ssh-keygen", "PROMSHARD_SSH_KEYGEN")
        .unwrap_or_else(|| PathBuf::from("ssh-keygen"));
    let out = Command::new(bin)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "promshard-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sshd running as root insists on its privilege-separation directory,
/// which Debian's init scripts create at boot; make it when missing.
fn privsep_dir() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && !Path::new("/run/sshd").exists() {
        let _ = fs::create_dir_all("/run/sshd");
    }
}

fn wait_listening(addr: &str, port: u16, guard: &mut ChildGuard) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.exited() {
            return Err(format!("sshd exited: {status}"));
        }
        match TcpStream::connect((addr, port)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{addr}:{port} not listening after 10s: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
