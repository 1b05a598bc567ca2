#!/usr/bin/env bash
# Finds the shared nixpkgs 25.05 tree (the flake's pin, shipped as a tarball in shared/nixpkgs
# beside the clone: <repo>/../shared) and prints what the Nix checks use:
#
#   nix-nixpkgs.sh tree    the unpacked tree (shared/nixpkgs/unpack, once per machine)
#   nix-nixpkgs.sh store   a store path holding the tree plus the stand-ins of
#                          vm-tests/nixos/nixpkgs-stubs/ (files the shared tree lacks), named
#                          `source`, as `nix eval --override-input nixpkgs path:…` wants it
#
# Exits 3 when there is no shared tree (the callers skip by hand and fail under CI=true), 1 on
# any other failure. PLASMACLOUD_SHARED overrides where shared/ is.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
shared=${PLASMACLOUD_SHARED:-$(cd "$repo/.." && pwd -P)/shared}
unpack="$shared/nixpkgs/unpack"

what=${1:-}
case "$what" in
  tree | store) ;;
  *)
    echo "usage: nix-nixpkgs.sh tree|store" >&2
    exit 1
    ;;
esac

if [ ! -x "$unpack" ]; then
  echo "nix-nixpkgs: no shared nixpkgs tree at $shared/nixpkgs (a clone of main with shared/ beside it has one; or set PLASMACLOUD_SHARED)" >&2
  exit 3
fi

tree=$("$unpack")
if [ "$what" = tree ]; then
  echo "$tree"
  exit 0
fi

# The tree as evaluated here: the shared tree (hard links, never written to) plus the stubs.
# Named after both, so a new tarball or a changed stub makes a new one.
stubs="$repo/vm-tests/nixos/nixpkgs-stubs"
stub_sum=$(cat "$stubs"/*.nix | sha256sum | cut -c1-12)
eval_tree="$tree+stubs-$stub_sum"
# One preparation at a time (several checkouts may run their checks at once).
exec 9>"$eval_tree.lock"
flock 9
if [ ! -f "$eval_tree.ready" ]; then
  rm -rf "$eval_tree.tmp"
  cp -al "$tree" "$eval_tree.tmp"
  rm -f "$eval_tree.tmp/.unpacked"
  haskell="$eval_tree.tmp/pkgs/development/haskell-modules"
  if [ -e "$haskell/hackage-packages.nix" ]; then
    echo "nix-nixpkgs: the shared tree has hackage-packages.nix now; drop vm-tests/nixos/nixpkgs-stubs/hackage-packages.nix" >&2
    exit 1
  fi
  cp "$stubs/hackage-packages.nix" "$haskell/hackage-packages.nix"
  rm -rf "$eval_tree" "$eval_tree.store-path"
  mv "$eval_tree.tmp" "$eval_tree"
  touch "$eval_tree.ready"
fi

# Add it to the store once. A path input that already is a valid store path named `source`
# is used as it is; any other path is copied into the store (400 MB) on every evaluation.
export NIX_CONFIG="${NIX_CONFIG:-}"$'\nbuild-users-group =\nexperimental-features = nix-command flakes'
cached="$eval_tree.store-path"
if [ -f "$cached" ] && nix-store --check-validity "$(cat "$cached")" 2>/dev/null; then
  cat "$cached"
  exit 0
fi
store=$(nix store add-path --name source "$eval_tree")
echo "$store" >"$cached"
echo "$store"
