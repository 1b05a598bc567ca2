# A stand-in for disko's NixOS module that reads the same `disko.devices` layout and only
# mounts it: `firstboot disk` creates the partition and filesystem on first boot (and never
# reformats one carrying the label), so the flake needs no disko input. To let disko format
# the disk instead (e.g. with nixos-anywhere), import disko's module in place of this one;
# the nodes' disko.nix files are written for it.
{ config, lib, ... }:
let
  # Every filesystem partition of every GPT disk in the layout.
  filesystems = lib.concatLists (
    lib.mapAttrsToList (
      _: disk:
      lib.mapAttrsToList (name: part: part // { partName = name; }) (
        lib.filterAttrs (_: p: (p.content.type or null) == "filesystem") (disk.content.partitions or { })
      )
    ) (config.disko.devices.disk or { })
  );
  labelOf =
    part:
    let
      args = part.content.extraArgs or [ ];
      i = lib.lists.findFirstIndex (a: a == "-L") null args;
    in
    if i != null && i + 1 < lib.length args then lib.elemAt args (i + 1) else part.partName;
in
{
  options.disko.devices = lib.mkOption {
    type = lib.types.lazyAttrsOf lib.types.anything;
    default = { };
    description = "A disko layout (disk.<name> = { type = \"disk\"; device; content = { type = \"gpt\"; partitions; }; }).";
  };

  config.fileSystems = lib.listToAttrs (
    map (part: {
      name = part.content.mountpoint;
      value = {
        device = "/dev/disk/by-label/${labelOf part}";
        fsType = part.content.format;
        options = part.content.mountOptions or [ ];
      };
    }) (lib.filter (p: p.content ? mountpoint) filesystems)
  );
}
