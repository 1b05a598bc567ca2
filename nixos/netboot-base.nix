# The netboot profile of a PlasmaCloud node: nixpkgs' netboot module (kernel, netboot ramdisk
# with the squashfs Nix store, netboot.ipxe), SSH with keys only, a serial console, DHCP on
# every ethernet, and the per-node overlay's and the enrollment initrd's files carried from the
# initramfs into the running system.
#
# Why the copy: pxe-server's per-node script appends two initrds after the base one: the
# bundle's per-node overlay (the contract and the node's name under /etc/plasmacloud; public)
# and this boot's enrollment initrd (/etc/plasmacloud/enroll/{token,ca.crt}: a single-use
# token, root only). The kernel unpacks all of them into the initramfs. NixOS runs stage 1
# there, mounts the real root (a tmpfs) at $targetRoot and switch_root's into it, which empties
# the initramfs: those files would be gone. So stage 1 copies them over after mounting and
# before switching, and makes the enrollment directory root's alone (0700, the token 0600)
# whatever the archive said.
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
  contractLib = import ./lib/contract.nix;
  enroll = contractLib.enrollDir;
  token = "${enroll}/${contractLib.enrollTokenFile}";
  ca = "${enroll}/${contractLib.enrollCaFile}";
  copyScripted =
    lib.concatMapStrings (dir: ''
      if [ -d ${dir} ]; then
        mkdir -p "$targetRoot${dirOf dir}"
        cp -a ${dir} "$targetRoot${dirOf dir}/"
        echo "plasmacloud: carried ${dir} from the overlay initrd into the system"
      fi
    '') cfg.overlayPaths
    + ''
      if [ -d ${enroll} ]; then
        mkdir -p "$targetRoot${dirOf enroll}"
        cp -a ${enroll} "$targetRoot${dirOf enroll}/"
        chown -R 0:0 "$targetRoot${enroll}"
        chmod 0700 "$targetRoot${enroll}"
        if [ -e "$targetRoot${token}" ]; then chmod 0600 "$targetRoot${token}"; fi
        if [ -e "$targetRoot${ca}" ]; then chmod 0644 "$targetRoot${ca}"; fi
        echo "plasmacloud: carried ${enroll} (this boot's enrollment token, root only) into the system"
      fi
    '';
  # Stage 1 with the systemd initrd: one oneshot per directory, after /sysroot is mounted and
  # before the switch; `post` runs after the copy.
  initrdCopy = description: dir: post: {
    inherit description;
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
    } // lib.optionalAttrs (post != [ ]) { ExecStartPost = post; };
  };
  overlayUnits = lib.imap0 (i: _: "plasmacloud-overlay-${toString i}") cfg.overlayPaths;
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
        Directories of the overlay initrd carried into the running system at stage 1: the
        contract and the node's name (/etc/plasmacloud/… is the convention; a path under the
        data disk's mount point would be hidden by the mount). The enrollment initrd's
        ${enroll} is always carried, made root's alone (0700, the token 0600).
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
        lib.zipListsWith (name: dir: {
          inherit name;
          value = initrdCopy "Carry ${dir} from the overlay initrd into /sysroot" dir [ ];
        }) overlayUnits cfg.overlayPaths
      )
      // {
        # After the overlay copies, which may carry the same directory with the archive's modes.
        plasmacloud-enroll =
          lib.recursiveUpdate
            (initrdCopy "Carry this boot's enrollment token into /sysroot (root only)" enroll [
              "/bin/chown -R 0:0 /sysroot${enroll}"
              "/bin/chmod 0700 /sysroot${enroll}"
              "-/bin/chmod 0600 /sysroot${token}"
              "-/bin/chmod 0644 /sysroot${ca}"
            ])
            { after = [ "initrd-fs.target" ] ++ map (u: "${u}.service") overlayUnits; };
      }
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
