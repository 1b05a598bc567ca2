# The provisioning server's own NixOS system for examples/cluster-3.json: the example of
# docs/nix.md, as `nixosConfigurations.pxe-host`. pxe-server runs on the boot network
# (`eth1`, at the contract's boot_server.address) in full DHCP mode; the management NIC
# (`eth0`) takes DHCP from the site network.
#
# What stays out of the Nix store (which every user of the machine can read): pxe-server's
# state directory — the leases, the cluster CA (`pki/ca.key`, made on the first start) and
# the enrollment token log — on this machine's disk, 0700 and owned by the service. The
# module refuses a state directory or a CA key given as a store path. The bundle is public
# (no key, password or token in it); here `netboot-image bundle` writes it on this host.
# Nodes enroll at the contract's boot_server.enrollment_port (8443, opened with the others).
{ lib, ... }:
let
  contractLib = import ../lib/contract.nix;
  contractFile = ../../examples/cluster-3.json;
  bootServer = contractLib.bootServer (contractLib.load contractFile);
  bootInterface = "eth1";
in
{
  networking.hostName = "pxe-host";

  services.pxe-server = {
    enable = true;
    interface = bootInterface;
    mode = "full";
    cluster = contractFile;
    # netboot-image bundle --cluster cluster-config.json --netboot $(nix build --print-out-paths .#netboot) --out /srv/plasmacloud/bundle
    bundle = "/srv/plasmacloud/bundle";
    stateDir = "/var/lib/pxe-server";
    dhcpRange = "10.99.0.100-10.99.0.200";
    openFirewall = true;
  };

  # The boot network: the contract's boot-server address, nothing else on it.
  networking.useDHCP = false;
  networking.interfaces.eth0.useDHCP = true;
  networking.interfaces.${bootInterface}.ipv4.addresses = [
    {
      inherit (bootServer) address;
      prefixLength = 24;
    }
  ];

  services.openssh = {
    enable = true;
    openFirewall = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
    };
  };

  boot.loader.grub.enable = lib.mkDefault true;
  boot.loader.grub.device = lib.mkDefault "/dev/vda";
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  system.stateVersion = "25.05";
}
