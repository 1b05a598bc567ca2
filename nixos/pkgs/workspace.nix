# The whole Rust workspace, built once (`rustPlatform.buildRustPackage` with the committed
# Cargo.lock); the per-binary packages in ./default.nix are thin views of this one build.
#
# RocksDB: linked from nixpkgs the way nixpkgs' own RocksDB consumers do (ROCKSDB_LIB_DIR,
# ROCKSDB_INCLUDE_DIR, bindgen through rustPlatform.bindgenHook) — but only when nixpkgs'
# rocksdb has the major.minor that librocksdb-sys in Cargo.lock was written for. Otherwise the
# bundled RocksDB is compiled (minutes of C++, but a library the crate's C API calls match).
{
  lib,
  rustPlatform,
  rocksdb,
  pkg-config,
  src,
  # The committed Cargo.lock, as a path (read at evaluation for the RocksDB version).
  cargoLockFile,
  version,
  contractLib ? import ../lib/contract.nix,
  # Force one road or the other; null = decide from the versions.
  linkSystemRocksdb ? null,
}:
let
  wantedRocksdb = contractLib.bundledRocksdbVersion cargoLockFile;
  versionsMatch = contractLib.sameMajorMinor wantedRocksdb rocksdb.version;
  useSystemRocksdb = if linkSystemRocksdb == null then versionsMatch else linkSystemRocksdb;
  # Cargo packages (not binaries) this build produces.
  cargoPackages = [
    "firstboot"
    "chainfire"
    "flaredb"
    "iam"
    "pxe-server"
    "netboot-image"
  ];
in
rustPlatform.buildRustPackage {
  pname = "plasmacloud-netboot";
  inherit version src;

  cargoLock.lockFile = cargoLockFile;

  cargoBuildFlags = map (p: "--package=${p}") cargoPackages;
  # The workspace's tests start real servers, namespaces and VMs (vm-tests/test-all runs them
  # as root); the nixosTest suites are this flake's checks instead.
  doCheck = false;

  nativeBuildInputs = [
    pkg-config
    rustPlatform.bindgenHook
  ];
  buildInputs = lib.optional useSystemRocksdb rocksdb;

  env = lib.optionalAttrs useSystemRocksdb {
    ROCKSDB_LIB_DIR = "${rocksdb}/lib";
    ROCKSDB_INCLUDE_DIR = "${rocksdb}/include";
  };

  passthru = {
    inherit cargoPackages useSystemRocksdb wantedRocksdb;
  };

  meta = {
    description = "PlasmaCloud netboot: provisioning server, image builder, first-boot oneshots and the Raft services";
    license = lib.licenses.asl20;
    platforms = lib.platforms.linux;
  };
}
