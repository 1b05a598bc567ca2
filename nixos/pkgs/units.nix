# The systemd unit files, rendered at build time by `firstboot units` (one source of truth:
# firstboot/oneshots/src/units.rs). ExecStart= points at the binaries of this one store path,
# so the units and the binaries always come from the same build.
{
  runCommand,
  symlinkJoin,
  firstboot,
  chainfire,
  flaredb,
  iam,
}:
let
  bin = symlinkJoin {
    name = "plasmacloud-node-bin";
    paths = [
      firstboot
      chainfire
      flaredb
      iam
    ];
  };
in
runCommand "plasmacloud-units-${firstboot.version}"
  {
    passthru.bin = bin;
    meta.description = "PlasmaCloud systemd units (firstboot chain with enrollment, Chainfire, FlareDB, IAM, cluster-ready.target)";
  }
  ''
    mkdir -p $out/lib/systemd/system
    ${firstboot}/bin/firstboot units --out $out/lib/systemd/system --bindir ${bin}/bin
    # Every unit of the design must be there; a renamed unit breaks the NixOS modules.
    for u in firstboot-disk firstboot-enroll firstboot-configure chainfire chainfire-cluster-join \
             flaredb flaredb-cluster-join iam iam-initial-setup cluster-health-check; do
      test -f $out/lib/systemd/system/$u.service || { echo "missing $u.service" >&2; exit 1; }
    done
    test -f $out/lib/systemd/system/cluster-ready.target
  ''
