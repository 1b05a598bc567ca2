//! Test support shared by every integration test of the workspace.
//!
//! What lives here, and only this:
//! - [`Process`]: a real binary started as a child process, its output captured to a log file,
//!   killed (SIGKILL) when dropped so a failing test leaves nothing running;
//! - [`wait_until`] / [`wait_until_async`]: poll a condition with backoff until a deadline, the
//!   only way a test waits (never a bare sleep);
//! - [`workspace_binary`]: the path of a binary built by this workspace (`cargo test --release`
//!   builds every workspace binary next to the test executables);
//! - [`free_port`] and [`loopback_ip`]: addresses for processes on 127.0.0.x;
//! - [`require`]: the skip rule for tests that need root or a Debian package — they may skip
//!   when run by hand without them, but under `CI=true` a missing requirement is a failure;
//! - [`run_to_end`]: a short-lived program run to its end within a deadline, its output kept;
//!   [`assert_harness_command_line`] checks a rack harness's answer to bad command lines;
//! - [`netns`]: network namespaces, bridges, taps and veth pairs, deleted on drop (root);
//! - [`scrape`]: a service's `/metrics` answer, parsed by a Prometheus text-format parser, and
//!   its series looked up by name and labels.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub mod netns;
pub mod scrape;

/// Whether we run under CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Effective uid 0 (network namespaces, loop devices, privileged ports).
    Root,
    /// An executable on `PATH`, usually from a Debian package.
    Tool(&'a str),
    /// A file, usually from a Debian package (firmware, signed boot loaders).
    File(&'a str),
}

/// Returns `true` when every need is met. When one is not: under `CI=true` this panics (CI must
/// never skip); by hand it prints why the test is skipped and returns `false`.
pub fn require(test: &str, needs: &[Need<'_>]) -> bool {
    for need in needs {
        let missing = match need {
            Need::Root => (!is_root()).then(|| "root".to_string()),
            Need::Tool(t) => which(t).is_none().then(|| format!("the `{t}` command")),
            Need::File(f) => (!std::path::Path::new(f).is_file()).then(|| format!("the file {f}")),
        };
        if let Some(what) = missing {
            if in_ci() {
                panic!(
                    "{test}: needs {what}, and CI=true forbids skipping; .ci/run must install it"
                );
            }
            eprintln!("SKIP {test}: needs {what} (set CI=true to make this a failure)");
            return false;
        }
    }
    true
}

/// Effective uid 0?
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Finds an executable on `PATH` (plus the sbin directories, which root's tools live in).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The path of a binary built by this workspace: in `$PLASMACLOUD_BIN_DIR` when that is set
/// (a target directory shared with another build), else next to the running test executable
/// (`target/<profile>/NAME`). Panics with the fix when it has not been built.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PLASMACLOUD_BIN_DIR") {
        let bin = PathBuf::from(dir).join(name);
        if bin.is_file() {
            return bin;
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>  ->  target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} was not built; run `cargo build --release --workspace` (or `cargo test --release --workspace`, which builds it)",
        bin.display()
    );
    bin
}

/// A distinct loopback address per call within this process (127.0.0.2 .. 127.0.0.254), so
/// tests running in parallel do not collide on well-known ports.
pub fn loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    // Spread processes apart: the pid picks a block of 30, calls walk within it.
    let base = (std::process::id() % 8) as u8 * 30;
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 30;
    Ipv4Addr::new(127, 0, 0, 2 + base + n)
}

/// A TCP port that was free on `ip` a moment ago (bind to port 0, read it back, release).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind port 0");
    let port = l.local_addr().expect("local_addr").port();
    // Also make sure the UDP side is free, for servers that use both.
    let _ = UdpSocket::bind((ip, port));
    port
}

/// A free `ip:port` on a fresh loopback address.
pub fn free_addr() -> SocketAddr {
    let ip = loopback_ip();
    SocketAddr::from((ip, free_port(ip)))
}

/// Polls `check` with backoff (10 ms doubling to 250 ms) until it returns `Some`, or fails
/// after `deadline` with a message naming `what` was awaited.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= deadline {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        std::thread::sleep(pause.min(deadline.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Async form of [`wait_until`].
pub async fn wait_until_async<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() >= deadline {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        tokio::time::sleep(pause.min(deadline.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// How a program run by [`run_to_end`] ended, and what it printed.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl Ran {
    /// The last line of stdout.
    pub fn last_line(&self) -> Option<&str> {
        self.stdout.lines().last()
    }
}

/// Runs `program args…` (stdin closed) until it exits, killing it after `deadline`.
pub fn run_to_end(program: &Path, args: &[&str], deadline: Duration) -> Result<Ran, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    // Read both pipes on threads of their own, so a full pipe never holds the program back.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let what = format!("{} {args:?} to exit", program.display());
    let status = match wait_until(&what, deadline, || child.try_wait().ok().flatten()) {
        Ok(status) => status,
        Err(e) => {
            // Not waiting for the pipes: a child of the program may still hold them open.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Ran {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// The last line of a rack harness (`local-rack`, `vm-rack`) that planned no rack.
pub const NO_RACK_LAST_LINE: &str = "cluster-ready: 0/0 nodes in 0.0 s";

/// Checks the rule for a rack harness's command line, on workspace binary `name`: each of the
/// `bad` command lines gets clap's message on stderr and clap's usage exit code (2), and stdout
/// still ends with the harness's last line ([`NO_RACK_LAST_LINE`]); `--help` prints the help
/// and exits 0 without it. Panics naming the command line that broke the rule.
pub fn assert_harness_command_line(name: &str, bad: &[&[&str]]) {
    let bin = workspace_binary(name);
    let deadline = Duration::from_secs(30);
    for args in bad {
        let r = run_to_end(&bin, args, deadline).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.code, Some(2), "{name} {args:?}: exit code: {r:?}");
        assert!(
            r.stderr.contains("error:"),
            "{name} {args:?}: clap's message: {r:?}"
        );
        assert_eq!(
            r.last_line(),
            Some(NO_RACK_LAST_LINE),
            "{name} {args:?}: last line: {r:?}"
        );
    }
    let r = run_to_end(&bin, &["--help"], deadline).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.code, Some(0), "{name} --help: {r:?}");
    assert!(r.stdout.contains("Usage:"), "{name} --help: {r:?}");
    assert!(!r.stdout.contains("cluster-ready:"), "{name} --help: {r:?}");
}

/// A real child process whose stdout and stderr go to `log`. Dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program args…` with its output captured to `log` (created or truncated).
    pub fn start<I, S>(name: &str, program: &Path, args: I, log: &Path) -> std::io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn(name, cmd, log)
    }

    /// Starts a prepared command (env, cwd already set) with its output captured to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `needle`, failing early (with the log) if the process
    /// exits first.
    pub fn wait_for_output(&mut self, needle: &str, deadline: Duration) -> Result<(), String> {
        let name = self.name.clone();
        let what = format!("{name} to print {needle:?}");
        let res = wait_until(&what, deadline, || {
            if self.output().contains(needle) {
                return Some(Ok(()));
            }
            self.try_exit_code().map(|code| {
                Err(format!(
                    "{name} exited with {code:?} before printing {needle:?}"
                ))
            })
        });
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => {
                Err(format!("{e}\n--- {} log ---\n{}", self.name, self.output()))
            }
        }
    }

    /// `Some(exit code)` once the process has exited (`Some(None)` = killed by a signal).
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    /// Waits for the process to exit, up to `deadline`, and returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<i32>, String> {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), deadline, || {
            self.try_exit_code()
        })
    }

    /// SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (clean shutdown), then wait up to `deadline`, then SIGKILL.
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let pid = self.pid()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let code = self.wait_exit(deadline).ok().flatten();
        self.kill();
        code
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_value_or_names_what_timed_out() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, Ok(3));
        let e = wait_until::<()>("never", Duration::from_millis(30), || None).unwrap_err();
        assert!(e.contains("waiting for never"), "{e}");
    }

    #[test]
    fn process_output_is_captured_and_exit_is_seen() {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Process::start(
            "echo",
            Path::new("/bin/sh"),
            ["-c", "echo listening; exit 3"],
            &dir.join("echo.log"),
        )
        .unwrap();
        p.wait_for_output("listening", Duration::from_secs(5))
            .unwrap();
        assert_eq!(p.wait_exit(Duration::from_secs(5)), Ok(Some(3)));
    }

    #[test]
    fn run_to_end_keeps_both_outputs_and_kills_at_the_deadline() {
        let sh = Path::new("/bin/sh");
        let r = run_to_end(
            sh,
            &["-c", "echo out; echo err >&2; exit 4"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((r.code, r.last_line()), (Some(4), Some("out")));
        assert_eq!(r.stderr, "err\n");
        let e = run_to_end(sh, &["-c", "sleep 60"], Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("to exit"), "{e}");
    }

    #[test]
    fn loopback_ips_are_distinct_and_in_range() {
        let a = loopback_ip();
        let b = loopback_ip();
        assert_ne!(a, b);
        assert_eq!(a.octets()[0], 127);
        assert!(a.octets()[3] >= 2);
    }
}
