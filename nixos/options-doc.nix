# The option documentation of the PlasmaCloud modules, the way the NixOS manual makes its own:
# `pkgs.nixosOptionsDoc` over the options our modules declare, evaluated in a real NixOS
# system. `doc` is nixpkgs' result (optionsJSON, optionsCommonMark: derivations, built by
# `nix build`); `markdown` is the same options rendered at evaluation time, which is what
# docs/options.md holds, so the page can be regenerated and checked for drift where nothing
# can be built (vm-tests/nix-flake-check.sh). `check` is that drift check as a derivation
# (the flake's checks.<system>.options-doc).
{
  pkgs,
  # The repository (a path): declarations are shown relative to it.
  root,
  # Every PlasmaCloud module (the flake's nixosModules.default).
  module,
}:
let
  inherit (pkgs) lib;

  eval = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    system = null;
    modules = [
      { nixpkgs.pkgs = pkgs; }
      module
      (root + "/nixos/netboot-base.nix")
    ];
  };

  # The option trees that are ours, each with the heading it gets on the page.
  sections = [
    {
      loc = [
        "services"
        "plasmacloud"
        "firstboot"
      ];
      title = "The first-boot chain";
    }
    {
      loc = [
        "services"
        "chainfire"
      ];
      title = "Chainfire";
    }
    {
      loc = [
        "services"
        "flaredb"
      ];
      title = "FlareDB";
    }
    {
      loc = [
        "services"
        "iam"
      ];
      title = "IAM";
    }
    {
      loc = [
        "services"
        "pxe-server"
      ];
      title = "The provisioning server";
    }
    {
      loc = [
        "plasmacloud"
        "netboot"
      ];
      title = "The netboot profile";
    }
  ];

  ours = lib.foldl' lib.recursiveUpdate { } (
    map (s: lib.setAttrByPath s.loc (lib.getAttrFromPath s.loc eval.options)) sections
  );

  # Declarations relative to the repository, as nixpkgs' manual shows its own.
  relative = d: lib.removePrefix "${toString root}/" (toString d);

  doc = pkgs.nixosOptionsDoc {
    options = ours;
    transformOptions = opt: opt // { declarations = map relative opt.declarations; };
  };

  # What `description`, `default` and `example` hold after nixosOptionsDoc: strings, or
  # `{ _type = "literalExpression" | "literalMD"; text; }`.
  inline = v: if lib.hasInfix "\n" v || lib.hasInfix "`" v then null else "`${v}`";
  block = text: "\n\n  ```nix\n" + lib.concatMapStrings (l: "  ${l}\n") (lib.splitString "\n" text) + "  ```";
  renderValue =
    v:
    if (v._type or null) == "literalMD" then
      " " + v.text
    else
      let
        text = if (v._type or null) == "literalExpression" then v.text else builtins.toJSON v;
      in
      if inline text != null then " " + inline text else block text;

  # nixos-render-docs fails an option without a description; so does this page.
  describe =
    name: opt:
    if opt.description == null || opt.description == "" then
      throw "options-doc: option ${name} has no description; give it one"
    else
      opt.description;

  renderOption =
    name: opt:
    lib.concatStringsSep "\n" (
      [
        "### `${name}`"
        ""
        (lib.removeSuffix "\n" (describe name opt))
        ""
        "- Type: `${opt.type}`"
      ]
      ++ lib.optional (opt ? default) "- Default:${renderValue opt.default}"
      ++ lib.optional (opt ? example) "- Example:${renderValue opt.example}"
      ++ lib.optional opt.readOnly "- Read-only."
      ++ [
        "- Declared in: ${lib.concatMapStringsSep ", " (d: "[`${d}`](../${d})") opt.declarations}"
        ""
      ]
    );

  inSection = s: name: lib.hasPrefix (lib.concatStringsSep "." s.loc + ".") name;

  renderSection =
    s:
    let
      names = lib.filter (inSection s) (lib.attrNames doc.optionsNix);
    in
    lib.concatStringsSep "\n" (
      [
        "## ${s.title}: `${lib.concatStringsSep "." s.loc}`"
        ""
      ]
      ++ map (n: renderOption n doc.optionsNix.${n}) names
    );

  markdown = ''
    # NixOS options of the PlasmaCloud modules

    Every option the modules in `nixos/` declare, with its type and default: what
    `nixosOptionsDoc` (the NixOS manual's generator) sees, evaluated against nixpkgs 25.05.
    Generated, do not edit: `vm-tests/nix-flake-check.sh --write-options-doc` writes this page,
    and the same script (part of `vm-tests/test-all`) and the flake's `checks.x86_64-linux.options-doc`
    fail when it drifts from the modules.

    Defaults written in words depend on other settings (the contract, the first-boot module);
    the modules read the contract at evaluation (see [nix.md](nix.md#settings-and-their-precedence)).

    ${lib.concatMapStringsSep "\n" (
      s: "- [${s.title}](#${lib.toLower (lib.replaceStrings [ " " ":" "`" "." ] [ "-" "" "" "" ] s.title)}-${lib.replaceStrings [ "." ] [ "" ] (lib.concatStringsSep "." s.loc)})"
    ) sections}

  ''
  + lib.concatMapStringsSep "\n" renderSection sections;

  check =
    pkgs.runCommand "plasmacloud-options-doc"
      {
        # Building this builds nixpkgs' own options.json, whose generator refuses options
        # without descriptions.
        optionsJSON = doc.optionsJSON;
        expected = pkgs.writeText "options.md" markdown;
        committed =
          if builtins.pathExists (root + "/docs/options.md") then
            root + "/docs/options.md"
          else
            builtins.toFile "options.md" "";
        passthru = {
          inherit markdown;
          inherit (doc) optionsJSON optionsCommonMark;
        };
      }
      ''
        if ! diff -u "$committed" "$expected"; then
          echo "docs/options.md is out of date: run vm-tests/nix-flake-check.sh --write-options-doc" >&2
          exit 1
        fi
        touch $out
      '';
in
{
  inherit
    doc
    markdown
    check
    ;
}
