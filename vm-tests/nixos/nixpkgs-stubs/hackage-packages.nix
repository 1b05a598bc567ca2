# A stand-in for nixpkgs' pkgs/development/haskell-modules/hackage-packages.nix, which the
# shared nixpkgs 25.05 tree lacks (the snapshot it comes from leaves out files of 4 MiB and
# more; see ../../../../shared/nixpkgs/README.md). vm-tests/nix-flake-check.sh puts it into
# its copy of the tree, never into the shared one.
#
# Without it no Haskell package evaluates, and three things the flake offers reach one:
# `formatter` and `devShells` (nixfmt-rfc-style), and the nixosTest driver (its Python
# dependencies pull in flac, whose man pages need pandoc). Each name below is a package of
# the real generated file that those reach (the GHC bootstrap tools, nixfmt's and pandoc's
# Hackage dependencies), declared with no dependencies and a fake hash: enough for every
# derivation to instantiate, not to build. So the .drv files of these Haskell packages (and
# of what depends on them) differ from real nixpkgs'; everything else is nixpkgs' own.
{
  pkgs,
  lib,
  callPackage,
}:
self:
let
  stub =
    pname:
    callPackage (
      { mkDerivation }:
      mkDerivation {
        inherit pname;
        version = "0";
        sha256 = lib.fakeSha256;
        description = "stand-in: hackage-packages.nix is not in the shared nixpkgs tree";
        license = lib.licenses.free;
      }
    ) { };
in
# Found by instantiating nixfmt-rfc-style and pandoc and adding each name the evaluation asked
# for, in that order.
lib.genAttrs [
  "safe-exceptions"
  "cmdargs"
  "file-embed"
  "parser-combinators"
  "scientific"
  "megaparsec_9_7_0"
  "extra"
  "base16-bytestring"
  "hscolour"
  "shake"
  "unordered-containers"
  "cryptohash-sha256"
  "alex"
  "happy"
  "pretty-simple"
  "hspec-discover"
  "jailbreak-cabal"
  "pandoc-cli"
  "pandoc-types"
  # pandoc's disallowedReferences name these; without them the top-level `warp` (a Rust
  # program whose closure reaches flac, and so pandoc again) would be taken.
  "warp"
  "pandoc"
  "typst"
] stub
