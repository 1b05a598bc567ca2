# The netboot profile of a PlasmaCloud node: nixpkgs' netboot module (kernel, netboot ramdisk
# with the squashfs Nix store, netboot.ipxe), SSH with keys only, a serial console, DHCP on
# every ethernet, and the per-node overlay's files carried from the initramfs into the running
# system.
#
# Why the copy: the bundle appends a per-node overlay initrd (contract, identity, secrets under
# /etc/plasmacloud) after the base initrd; the kernel unpacks both into the initramfs. NixOS
# runs stage 1 there, mounts the real root (a tmpfs) at $targetRoot and switch_root's into it,
# which empties the initramfs: the overlay's files would be gone. So stage 1 copies them over
# after mounting and before switching.
{
  config,
  lib,
  modulesPath,
  ...
}:
let
  inherit (lib)
    mkOption
    mkIf
    mkDefault
    types
    ;
  cfg = config.plasmacloud.netboot;
  copyScripted = lib.concatMapStrings (dir: ''
    if [ -d ${dir} ]; then
      mkdir -p "$targetRoot${dirOf dir}"
      cp -a ${dir} "$targetRoot${dirOf dir}/"
      echo "plasmacloud: carried ${dir} from the overlay initrd into the system"
    fi
  '') cfg.overlayPaths;
in
{
  imports = [
    (modulesPath + "/installer/netboot/netboot.nix")
    (modulesPath + "/profiles/minimal.nix")
    ./firstboot.nix
  ];

  options.plasmacloud.netboot = {
    sshAuthorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        SSH public keys allowed to log in as root; passwords never are (root's password is
        locked, SSH refuses password and keyboard-interactive logins).
      '';
    };

    overlayPaths = mkOption {
      type = types.listOf (types.strMatching "/[^ ]*[^/ ]");
      default = [ "/etc/plasmacloud" ];
      description = ''
        Directories of the overlay initrd carried into the running system at stage 1. The
        contract's secret paths (TLS keys, the IAM bootstrap credential) must lie under one of
        them (/etc/plasmacloud/… is the convention); a path under the data disk's mount point
        would be hidden by the mount.
      '';
    };

    serialConsole = mkOption {
      type = types.str;
      default = "ttyS0,115200n8";
      description = "The serial console (the last console= is /dev/console).";
    };
  };

  config = {
    # Stage 1, scripted initrd (the default): after the file systems are mounted under
    # $targetRoot, before switch_root.
    boot.initrd.postMountCommands = mkIf (!config.boot.initrd.systemd.enable) copyScripted;

    # Stage 1, systemd initrd: the same copy as a unit, after /sysroot is mounted and before
    # the switch.
    boot.initrd.systemd.services = mkIf config.boot.initrd.systemd.enable (
      lib.listToAttrs (
        lib.imap0 (i: dir: {
          name = "plasmacloud-overlay-${toString i}";
          value = {
            description = "Carry ${dir} from the overlay initrd into /sysroot";
            wantedBy = [ "initrd.target" ];
            after = [ "initrd-fs.target" ];
            before = [
              "initrd.target"
              "initrd-switch-root.target"
            ];
            unitConfig = {
              DefaultDependencies = false;
              ConditionPathIsDirectory = dir;
            };
            serviceConfig = {
              Type = "oneshot";
              ExecStartPre = "/bin/mkdir -p /sysroot${dirOf dir}";
              ExecStart = "/bin/cp -a ${dir} /sysroot${dirOf dir}/";
            };
          };
        }) cfg.overlayPaths
      )
    );

    boot.kernelParams = [
      "console=tty0"
      "console=${cfg.serialConsole}"
    ];

    # SSH with keys only.
    services.openssh = {
      enable = true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "prohibit-password";
      };
    };
    users.users.root = {
      openssh.authorizedKeys.keys = cfg.sshAuthorizedKeys;
      hashedPassword = "!";
    };

    # DHCP on every ethernet (pxe-server hands out the contract's address by MAC).
    networking.useNetworkd = mkDefault true;
    networking.useDHCP = mkDefault true;
    # The hostname comes from the node's identity, not from the (shared) image.
    networking.hostName = mkDefault "";

    systemd.services.plasmacloud-hostname = {
      description = "Set the hostname from the overlay's node identity";
      wantedBy = [ "multi-user.target" ];
      before = [ "network-pre.target" ];
      wants = [ "network-pre.target" ];
      unitConfig.ConditionPathExists = "/etc/plasmacloud/node";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        name=$(head -n1 /etc/plasmacloud/node)
        [ -n "$name" ] && echo "$name" > /proc/sys/kernel/hostname
      '';
    };

    # A netbooted node is a PlasmaCloud node: the chain and the three services. Its contract
    # and identity come with the overlay (firstboot.contract and nodeName stay null).
    services.plasmacloud.firstboot.enable = mkDefault true;
    services.chainfire.enable = mkDefault true;
    services.flaredb.enable = mkDefault true;
    services.iam.enable = mkDefault true;
    services.chainfire.openFirewall = mkDefault true;
    services.flaredb.openFirewall = mkDefault true;
    services.iam.openFirewall = mkDefault true;

    # The image runs from RAM (a tmpfs root): no NixOS state survives a boot, and the data
    # disk holds only PlasmaCloud's own state, which no stateVersion-dependent default
    # touches. So the release these modules are written against (nixpkgs' netboot module
    # does not set it, and NixOS warns when nobody does).
    system.stateVersion = mkDefault "25.05";
  };
}
