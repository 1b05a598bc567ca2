//! The root filesystem tree: an existing directory, or `debootstrap --variant=minbase` with
//! systemd run once and cached under `CACHE/rootfs-<hash of suite, mirror and package list>`,
//! then pruned of what an appliance never reads.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// Debian packages of the appliance on top of `minbase`. Not `xfsprogs`: it pulls in Python and
/// ICU (80 MB, a third of the tree); add it with `--extra-packages xfsprogs` for a contract whose
/// disks are XFS.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "iproute2",
    "kmod",
    "dbus",
    "e2fsprogs",
    "fdisk",
    "gdisk",
    "ca-certificates",
    "procps",
];

/// Default Debian suite.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Default Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// How to get the root filesystem.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// An existing tree.
    Dir(PathBuf),
    /// `debootstrap --variant=minbase --include=PACKAGES SUITE DIR MIRROR`, cached.
    Debootstrap {
        /// Debian suite.
        suite: String,
        /// Mirror URL.
        mirror: String,
        /// Packages on top of minbase.
        packages: Vec<String>,
    },
}

/// The cache directory of a debootstrapped tree: `CACHE/rootfs-<16 hex of sha256(suite,
/// mirror, sorted packages)>`.
pub fn rootfs_cache_dir(cache: &Path, suite: &str, mirror: &str, packages: &[String]) -> PathBuf {
    let mut p: Vec<&str> = packages.iter().map(String::as_str).collect();
    p.sort();
    p.dedup();
    let key = Sha256::digest(format!(
        "minbase\n{suite}\n{mirror}\n{}\nprune-v2",
        p.join(",")
    ));
    cache.join(format!("rootfs-{}", &hex::encode(key)[..16]))
}

/// Returns the tree for `src`, running debootstrap once (into a temporary directory renamed
/// at the end, so an interrupted run is never mistaken for a finished one).
pub fn ensure_rootfs(src: &RootfsSource, cache: &Path) -> Result<PathBuf, ImageError> {
    let (suite, mirror, packages) = match src {
        RootfsSource::Dir(d) => {
            if !d.is_dir() {
                return Err(ImageError::bad(
                    d,
                    "not a directory (expected a root filesystem tree)",
                ));
            }
            return Ok(d.clone());
        }
        RootfsSource::Debootstrap {
            suite,
            mirror,
            packages,
        } => (suite, mirror, packages),
    };
    let dir = rootfs_cache_dir(cache, suite, mirror, packages);
    if dir.is_dir() {
        tracing::info!(rootfs = %dir.display(), "debootstrapped tree from the cache");
        return Ok(dir);
    }
    fs::create_dir_all(cache).map_err(ImageError::io(cache, "creating"))?;
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ImageError::io(&tmp, "removing"))?;
    }
    let include = packages.join(",");
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={include}"))
        .arg(suite)
        .arg(&tmp)
        .arg(mirror);
    let line = format!("{cmd:?}");
    tracing::info!(command = %line, "debootstrap (once; cached at {})", dir.display());
    let started = std::time::Instant::now();
    let (status, log) = run_showing_stages(&mut cmd, started).map_err(|e| ImageError::Command {
        command: line.clone(),
        status: "could not start".into(),
        log: format!("{e} (install the debootstrap package)"),
    })?;
    if !status.success() {
        let mut log = log;
        let debootstrap_log =
            fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
        log.push_str(&debootstrap_log);
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let _ = fs::remove_dir_all(&tmp);
        return Err(ImageError::Command {
            command: line,
            status: status.to_string(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    prune_rootfs(&tmp)?;
    if let Err(e) = fs::rename(&tmp, &dir) {
        // Another build finished the same tree first: use it.
        let _ = fs::remove_dir_all(&tmp);
        if !dir.is_dir() {
            return Err(ImageError::io(&dir, "renaming into the cache")(e));
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), rootfs = %dir.display(), "debootstrap done");
    Ok(dir)
}

/// Runs debootstrap, logging a line (with the time since `started`) each time it enters a new
/// stage ("Retrieving", "Validating", "Extracting", "Installing", "Configuring", …: the verb of
/// its `I:` lines), so a first build that takes minutes is never silent. Returns its exit
/// status and everything it printed.
fn run_showing_stages(
    cmd: &mut Command,
    started: std::time::Instant,
) -> std::io::Result<(std::process::ExitStatus, String)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let mut log = String::new();
    let mut stage = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("I: ") {
                let verb = rest.split_whitespace().next().unwrap_or("").to_string();
                if verb != stage {
                    tracing::info!(
                        elapsed = format_args!("{:.0?}", started.elapsed()),
                        "debootstrap: {rest}"
                    );
                    stage = verb;
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child.wait()?;
    log.push_str(&err_reader.join().unwrap_or_default());
    Ok((status, log))
}

/// Removes what an appliance never reads: apt's package cache and lists, documentation, man
/// pages, translations, udev's hardware database (names and vendor strings only) and glibc's
/// iconv modules.
fn prune_rootfs(root: &Path) -> Result<(), ImageError> {
    for d in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/debconf",
        "usr/lib/udev/hwdb.d",
        "usr/lib/x86_64-linux-gnu/gconv",
    ] {
        let p = root.join(d);
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(ImageError::io(&path, "pruning"))?;
        }
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_cache_key_ignores_package_order() {
        let a = rootfs_cache_dir(Path::new("/c"), "bookworm", "m", &["a".into(), "b".into()]);
        let b = rootfs_cache_dir(Path::new("/c"), "bookworm", "m", &["b".into(), "a".into()]);
        assert_eq!(a, b);
    }
}
