# What the three example nodes share: a PlasmaCloud node of examples/cluster-3.json whose
# address, hostname and data disk come from the contract. Each node sets its name.
{
  config,
  lib,
  ...
}:
let
  contractLib = import ../lib/contract.nix;
  contractFile = ../../examples/cluster-3.json;
  contract = contractLib.load contractFile;
  name = config.plasmacloud.node.name;
  net = contractLib.nodeNetwork contract name;
in
{
  imports = [
    ../default.nix
    ../disko-mounts.nix
  ];

  options.plasmacloud.node = {
    name = lib.mkOption {
      type = lib.types.enum (contractLib.nodeNames contract);
      description = "This node's name in the contract.";
    };
    interface = lib.mkOption {
      type = lib.types.str;
      default = "cluster0";
      description = "The name given to the NIC whose MAC the contract lists.";
    };
  };

  config = {
    networking.hostName = net.hostName;

    # The contract's NIC, by MAC, with the contract's address.
    systemd.network.links."10-${config.plasmacloud.node.interface}" = {
      matchConfig.PermanentMACAddress = net.macAddress;
      linkConfig.Name = config.plasmacloud.node.interface;
    };
    networking.interfaces.${config.plasmacloud.node.interface}.ipv4.addresses = [
      {
        inherit (net) address prefixLength;
      }
    ];

    services.plasmacloud.firstboot = {
      enable = true;
      contract = contractFile;
      nodeName = name;
    };
    services.chainfire = {
      enable = true;
      openFirewall = true;
    };
    services.flaredb = {
      enable = true;
      openFirewall = true;
    };
    services.iam = {
      enable = true;
      openFirewall = true;
    };

    services.openssh = {
      enable = true;
      settings.PasswordAuthentication = false;
      settings.KbdInteractiveAuthentication = false;
    };

    boot.loader.grub.enable = lib.mkDefault true;
    boot.loader.grub.device = lib.mkDefault "/dev/vda";
    fileSystems."/" = lib.mkDefault {
      device = "/dev/disk/by-label/nixos";
      fsType = "ext4";
    };
    boot.kernelParams = [ "console=ttyS0,115200n8" ];

    system.stateVersion = "25.05";
  };
}
