//! `netboot-image`: boot bundles and the Debian test appliance. See the library docs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use netboot_image::appliance::{
    build_appliance, ApplianceSpec, RootfsSource, DEFAULT_BINDIR, DEFAULT_MIRROR, DEFAULT_PACKAGES,
    DEFAULT_SUITE,
};
use netboot_image::bundle::{build_bundle, BaseImage, BundleSpec};
use netboot_image::elf::DEFAULT_LIB_DIRS;
use netboot_image::modules::DEFAULT_MODULES;

/// Default cache directory (debootstrapped trees, layers, file hashes).
const DEFAULT_CACHE_DIR: &str = "/var/cache/plasmacloud";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Boot bundles (kernel, base initrd, per-node overlays, manifest) and the Debian test appliance"
)]
struct Cli {
    /// Log as JSON lines (for machines) instead of text.
    #[arg(long, global = true, env = "PLASMACLOUD_IMAGE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a bundle directory for the PXE server from a contract and a kernel + base initrd.
    Bundle(BundleArgs),
    /// Build the Debian test appliance initrd (systemd as /init, no switch-root).
    Appliance(ApplianceArgs),
}

#[derive(Debug, Args)]
struct BundleArgs {
    /// The cluster contract (cluster-config.json).
    #[arg(long, env = "PLASMACLOUD_IMAGE_CLUSTER")]
    cluster: PathBuf,
    /// The bundle directory to write (replaced as a whole at the end).
    #[arg(long, env = "PLASMACLOUD_IMAGE_OUT")]
    out: PathBuf,
    /// A `nix build .#netboot` result: bzImage, initrd, netboot.ipxe (init= and kernel
    /// parameters are read from it).
    #[arg(long, env = "PLASMACLOUD_IMAGE_NETBOOT", conflicts_with_all = ["kernel", "initrd", "cmdline"])]
    netboot: Option<PathBuf>,
    /// The kernel (with --initrd, instead of --netboot).
    #[arg(long, env = "PLASMACLOUD_IMAGE_KERNEL", requires = "initrd")]
    kernel: Option<PathBuf>,
    /// The base initrd (with --kernel).
    #[arg(long, env = "PLASMACLOUD_IMAGE_INITRD", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line of every entry (with --kernel); nodes get plasmacloud.node=NAME added.
    #[arg(
        long,
        env = "PLASMACLOUD_IMAGE_CMDLINE",
        default_value = "",
        requires = "kernel"
    )]
    cmdline: String,
    /// Gone: bundles carry no secrets (nodes make their keys at enrollment). Kept only to
    /// say so to an old invocation.
    #[arg(long, hide = true, value_name = "DIR")]
    secrets: Option<PathBuf>,
    /// Worker threads (0: one per CPU).
    #[arg(long, env = "PLASMACLOUD_IMAGE_JOBS", default_value_t = 0)]
    jobs: usize,
}

#[derive(Debug, Args)]
struct ApplianceArgs {
    /// An existing root filesystem tree (instead of --debootstrap).
    #[arg(
        long,
        env = "PLASMACLOUD_IMAGE_ROOTFS",
        required_unless_present = "debootstrap",
        conflicts_with = "debootstrap"
    )]
    rootfs: Option<PathBuf>,
    /// Debootstrap the root filesystem (once; cached in CACHE/rootfs-<hash of the package list>).
    #[arg(long, env = "PLASMACLOUD_IMAGE_DEBOOTSTRAP")]
    debootstrap: bool,
    /// Debian suite for --debootstrap.
    #[arg(long, env = "PLASMACLOUD_IMAGE_SUITE", default_value = DEFAULT_SUITE)]
    suite: String,
    /// Debian mirror for --debootstrap.
    #[arg(long, env = "PLASMACLOUD_IMAGE_MIRROR", default_value = DEFAULT_MIRROR)]
    mirror: String,
    /// Packages on top of minbase for --debootstrap (comma-separated; replaces the default list).
    #[arg(long, env = "PLASMACLOUD_IMAGE_PACKAGES", value_delimiter = ',', default_values_t = DEFAULT_PACKAGES.iter().map(|s| s.to_string()))]
    packages: Vec<String>,
    /// Extra packages added to --packages.
    #[arg(long, env = "PLASMACLOUD_IMAGE_EXTRA_PACKAGES", value_delimiter = ',')]
    extra_packages: Vec<String>,
    /// The kernel the appliance boots with; its release picks /lib/modules/<release>.
    #[arg(long, env = "PLASMACLOUD_IMAGE_KERNEL")]
    kernel: Option<PathBuf>,
    /// Where kernel modules are on this machine.
    #[arg(
        long,
        env = "PLASMACLOUD_IMAGE_MODULES_ROOT",
        default_value = "/lib/modules"
    )]
    modules_root: PathBuf,
    /// Kernel modules to pack, with their dependencies (comma-separated).
    #[arg(long, env = "PLASMACLOUD_IMAGE_MODULES", value_delimiter = ',', default_values_t = DEFAULT_MODULES.iter().map(|s| s.to_string()))]
    modules: Vec<String>,
    /// This project's binaries (repeat, or comma-separated); their shared libraries come along.
    #[arg(long = "bin", env = "PLASMACLOUD_IMAGE_BINS", value_delimiter = ',')]
    bins: Vec<PathBuf>,
    /// Where binaries go in the appliance (render units with the same --bindir).
    #[arg(long, env = "PLASMACLOUD_IMAGE_BINDIR", default_value = DEFAULT_BINDIR)]
    bindir: String,
    /// Rendered systemd units (`firstboot units --out DIR`), installed in /etc/systemd/system
    /// and enabled from their [Install] sections.
    #[arg(long, env = "PLASMACLOUD_IMAGE_UNITS")]
    units: Option<PathBuf>,
    /// Library directories for DT_NEEDED (comma-separated; default: Debian's standard ones).
    #[arg(long = "lib-dir", env = "PLASMACLOUD_IMAGE_LIB_DIRS", value_delimiter = ',', default_values_t = DEFAULT_LIB_DIRS.iter().map(|s| s.to_string()))]
    lib_dirs: Vec<String>,
    /// Cache directory: debootstrapped trees, packed layers, file hashes.
    #[arg(long, env = "PLASMACLOUD_IMAGE_CACHE", default_value = DEFAULT_CACHE_DIR)]
    cache: PathBuf,
    /// The initrd to write.
    #[arg(long, env = "PLASMACLOUD_IMAGE_OUT")]
    out: PathBuf,
    /// Worker threads (0: one per CPU).
    #[arg(long, env = "PLASMACLOUD_IMAGE_JOBS", default_value_t = 0)]
    jobs: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        sub.json().init();
    } else {
        sub.init();
    }
    match cli.command {
        Cmd::Bundle(a) => bundle(a),
        Cmd::Appliance(a) => appliance(a),
    }
}

fn bundle(a: BundleArgs) -> Result<()> {
    if let Some(dir) = &a.secrets {
        bail!(
            "--secrets {}: bundles carry no secrets any more (contract version 2): nodes make their keys at enrollment through pxe-server, and the IAM admin is a password hash in the contract; drop --secrets (and keep those files off the provisioning host)",
            dir.display()
        );
    }
    let base = match (&a.netboot, &a.kernel, &a.initrd) {
        (Some(dir), None, None) => BaseImage::from_netboot(dir)
            .with_context(|| format!("while reading the netboot result {}", dir.display()))?,
        (None, Some(kernel), Some(initrd)) => BaseImage {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: a.cmdline.clone(),
        },
        _ => bail!("give either --netboot PATH, or --kernel K --initrd I [--cmdline …]"),
    };
    let spec = BundleSpec {
        cluster: a.cluster,
        base,
        out: a.out.clone(),
        jobs: a.jobs,
    };
    let manifest = build_bundle(&spec)
        .with_context(|| format!("while writing the bundle {}", a.out.display()))?;
    println!(
        "bundle {}: {} files, {} entries, cluster {}",
        a.out.display(),
        manifest.files.len(),
        manifest.entries.len(),
        manifest.cluster_name
    );
    Ok(())
}

fn appliance(a: ApplianceArgs) -> Result<()> {
    let rootfs = match (&a.rootfs, a.debootstrap) {
        (Some(dir), false) => RootfsSource::Dir(dir.clone()),
        (None, true) => {
            let mut packages = a.packages.clone();
            packages.extend(a.extra_packages.iter().cloned());
            RootfsSource::Debootstrap {
                suite: a.suite.clone(),
                mirror: a.mirror.clone(),
                packages,
            }
        }
        _ => bail!("give either --rootfs DIR or --debootstrap"),
    };
    let spec = ApplianceSpec {
        rootfs,
        kernel: a.kernel,
        modules_root: a.modules_root,
        modules: a.modules,
        bins: a.bins,
        bindir: a.bindir,
        units: a.units,
        lib_dirs: a.lib_dirs.iter().map(PathBuf::from).collect(),
        cache_dir: a.cache,
        out: a.out.clone(),
        jobs: a.jobs,
    };
    let report = build_appliance(&spec)
        .with_context(|| format!("while building the appliance {}", a.out.display()))?;
    println!(
        "{}",
        serde_json::to_string(&report).context("while printing the report")?
    );
    Ok(())
}
