# nixosTest: the boot path end to end. `boot` runs services.pxe-server (full DHCP mode) on the
# test VLAN, with the cluster CA in its state directory (made on its first start); node01..node03
# are diskless QEMU machines with the contract's MACs and one empty data disk each, which
# PXE-boot from it over that VLAN (virtio-net's iPXE ROM → DHCP → HTTP per-node iPXE script →
# kernel, netboot ramdisk, the node's public overlay, this boot's enrollment initrd with a
# single-use token and ca.crt; no user-mode TFTP), enroll with pxe-server over HTTPS
# (firstboot-enroll makes the key on the node), run the netboot image's first-boot chain and
# must reach cluster-ready with the same checks as cluster-bootstrap and the Rust rack harness;
# then the rack's reboot scenario (node03 power-cycles, netboots again from RAM, finds its Raft
# data and its certificate on its disk, and needs no new certificate).
{
  pkgs,
  plasmacloudModule,
  packages,
}:
let
  inherit (pkgs) lib;
  # Netbooted nodes see their data disk as /dev/vda (their only virtio disk).
  t = import ./lib/test-contract.nix {
    inherit pkgs;
    dataDisk = "/dev/vda";
  };
  inherit (t) contract contractLib;
  bootServer = contractLib.bootServer contract;

  # The netboot image the nodes boot: the flake's netboot profile plus the test driver's
  # backdoor (test-instrumentation), so the driver can talk to machines it did not build.
  netbootSystem = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    system = null;
    modules = [
      { nixpkgs.pkgs = pkgs; }
      plasmacloudModule
      ../../nixos/netboot-base.nix
      (pkgs.path + "/nixos/modules/testing/test-instrumentation.nix")
      {
        environment.systemPackages = [ pkgs.curl ];
        services.plasmacloud.firstboot.deadline = "15m";
        # The instrumentation gives root an empty hashedPasswordFile (for interactive runs);
        # netboot-base's locked hashedPassword beside it makes NixOS warn about two password
        # options. The test image keeps the instrumentation's.
        users.users.root.hashedPassword = lib.mkForce null;
      }
    ];
  };
  netboot = pkgs.callPackage ../../nixos/pkgs/netboot.nix { nixos = netbootSystem; };

  # Public: kernel, initrd, the contract and each node's name (no secret in it).
  bundle = pkgs.callPackage ../../nixos/pkgs/bundle.nix {
    inherit (packages) netboot-image;
    inherit netboot;
    contract = t.file;
  };
  stateDir = "/var/lib/pxe-server";
  names = contractLib.nodeNames contract;

  # The same QEMU invocation the driver uses for its own nodes (KVM when there is one).
  # (callPackage: the file's arguments differ between nixpkgs releases.)
  qemuCommon = pkgs.callPackage (pkgs.path + "/nixos/lib/qemu-common.nix") { };
  qemu = qemuCommon.qemuBinary pkgs.qemu_test;
  startCommand =
    name:
    let
      n = contractLib.nodeNetwork contract name;
    in
    lib.concatStringsSep " " [
      qemu
      "-m 3072"
      "-smp 2"
      "-boot order=n"
      "-netdev vde,id=net0,sock=\"$QEMU_VDE_SOCKET_1\""
      "-device virtio-net-pci,netdev=net0,mac=${n.macAddress}"
      "-drive file=\"$TMPDIR/${name}-data.qcow2\",if=virtio,format=qcow2"
    ];
in
pkgs.testers.runNixOSTest {
  name = "plasmacloud-pxe-boot";

  nodes.boot =
    { lib, ... }:
    {
      imports = [ plasmacloudModule ];
      virtualisation = {
        vlans = [ 1 ];
        memorySize = 1024;
      };
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        {
          address = bootServer.address;
          prefixLength = 24;
        }
      ];
      services.pxe-server = {
        enable = true;
        interface = "eth1";
        mode = "full";
        cluster = contract;
        inherit bundle;
        openFirewall = true;
      };
      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    import os
    import subprocess

    ${builtins.readFile ./lib/checks.py}

    contract = json.loads(${builtins.toJSON (builtins.toJSON contract)})
    login = json.loads(${builtins.toJSON (builtins.toJSON t.login)})
    names = ${builtins.toJSON names}
    state = "${stateDir}"


    def issued_certificates() -> int:
        """How many certificates the CA signed (pki/issued.log, one JSON line each)."""
        return int(boot.succeed(f"cat {state}/pki/issued.log 2>/dev/null | grep -c . || true").strip() or "0")


    with phase("the provisioning server comes up with its CA in its state directory"):
        boot.start()
        boot.wait_for_unit("pxe-server.service")
        boot.wait_for_open_port(${toString bootServer.http_port}, "${bootServer.address}")
        boot.wait_for_open_port(${toString bootServer.management_port}, "${bootServer.address}")
        boot.wait_for_open_port(${toString bootServer.enrollment_port}, "${bootServer.address}")
        got = boot.succeed(f"stat -c '%a %U' {state} {state}/pki {state}/pki/ca.key").split()
        assert got == ["700", "pxe-server"] * 2 + ["600", "pxe-server"], f"the state directory and the CA key: {got}"
        print(boot.succeed(f"pxe-server pki show --state-dir {state}"))

    with phase("three diskless nodes, each with an empty data disk"):
        for name in names:
            subprocess.run(
                ["${pkgs.qemu_test}/bin/qemu-img", "create", "-f", "qcow2",
                 os.path.join(os.environ["TMPDIR"], f"{name}-data.qcow2"), "2G"],
                check=True,
            )
        starts = json.loads(${builtins.toJSON (builtins.toJSON (lib.genAttrs (contractLib.nodeNames contract) startCommand))})
        machines = [create_machine(starts[name], name=name) for name in names]

    with phase("netboot: PXE → iPXE → kernel, initrd, overlay"):
        for m in machines:
            m.start()
        for m in machines:
            m.wait_for_unit("multi-user.target", timeout=1200)
            # The overlay's and the enrollment initrd's files were carried into the running
            # system at stage 1, the token root's alone.
            m.succeed(f"grep -qx {m.name} /etc/plasmacloud/node")
            m.succeed("test -s /etc/plasmacloud/cluster-config.json")
            got = m.succeed("stat -c '%a %U' ${contractLib.enrollDir} ${contractLib.enrollDir}/${contractLib.enrollTokenFile}").split()
            assert got == ["700", "root", "600", "root"], f"{m.name}: the enrollment directory and token: {got}"
            m.succeed("test -s ${contractLib.enrollDir}/${contractLib.enrollCaFile}")

    with phase("enrollment: each node made its key and got its certificate from pxe-server"):
        for m in machines:
            m.wait_for_unit("firstboot-enroll.service", timeout=1200)
        assert issued_certificates() == len(names), f"pxe-server signed {issued_certificates()} certificates"

    cluster = Cluster(machines, contract, login)
    check_cluster(cluster)

    with phase("the data disk carries the Raft data"):
        for m in machines:
            m.succeed("findmnt -n -o SOURCE /var/lib/plasmacloud | grep -q '^/dev/vda'")

    with phase("reboot: node03 power-cycles, PXE-boots again, comes back as the same member with its data"):
        scenario_reboot(cluster, "node03")

    with phase("after the reboot node03 kept its key and certificate: nothing new was signed"):
        cluster.machines["node03"].succeed(
            "journalctl -b -u firstboot-enroll.service | grep -q 'holds its certificate already'")
        assert issued_certificates() == len(names), f"pxe-server signed {issued_certificates()} certificates"
  '';
}
