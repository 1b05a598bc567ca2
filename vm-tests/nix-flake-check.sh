#!/usr/bin/env bash
# The flake against the real nixpkgs 25.05 (its pin; the shared tree, offline): the CI step
# that stands in for `nix flake check` and `nix build --dry-run` of everything a user would
# build or check. Nothing is built (no binary cache, no downloads); every output is
# instantiated, i.e. its .drv file is written to /nix/store, which needs every option,
# module, package attribute and function it uses to exist and type-check.
#
#   1. packages.{x86_64,aarch64}-linux.*, nixosConfigurations.*.config.system.build.toplevel,
#      checks.x86_64-linux.* (the nixosTest suites with their drivers and VMs, nix-eval,
#      options-doc), devShells.*.default, formatter.*, and nixosOptionsDoc's optionsJSON and
#      optionsCommonMark: each .drvPath evaluated and the .drv present in the store;
#   2. no evaluation warning and no trace: any line Nix prints besides its own notes about
#      the lock file fails the step (NixOS prints the `warnings` of our modules that way);
#   3. no secret in the store: every .drv and input source those outputs depend on is read
#      for private keys and passwords (the repository's and nixpkgs' own text aside; the test
#      admin's password only in the nixosTest drivers, whose scripts log in with it);
#   4. in the real NixOS evaluation: the modules refuse secrets given as store paths
#      (pxe-server's state directory, as option or setting, and CA key to import; IAM's
#      signing key) and a contract whose admin carries a password; a version-1 contract stops
#      the evaluation with `firstboot validate`'s advice; another contract path moves the
#      chain's ConditionPathExists=;
#   5. docs/options.md is what nixosOptionsDoc makes of our options now (--write-options-doc
#      rewrites it);
#   6. the nixosTest testScripts pass the checks nixpkgs' driver build runs: pyflakes with the
#      driver's symbols as builtins, mypy with the driver's type stubs prepended and its own
#      sources (the shared tree's nixos/lib/test-driver) on the path;
#   7. the step can fail: in a copy of the repository, an undefined option, a wrong type, a
#      module warning and a private key a module writes into the store each make it fail,
#      naming what is wrong; so do a misspelt method and an undefined name in a test script.
#
# Without the shared tree this skips (by hand) or fails (CI=true). Prints every check, then
# `N passed, M failed in S s`; exits 1 on a failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
started=$(date +%s)

write_options_doc=0
[ "${1:-}" = --write-options-doc ] && write_options_doc=1

export NIX_CONFIG="${NIX_CONFIG:-}"$'\nbuild-users-group =\nexperimental-features = nix-command flakes'

for tool in nix nix-store pyflakes3 mypy python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "nix-flake-check: $tool not found (vm-tests/install-deps installs nix-bin, pyflakes3, mypy)" >&2
    exit 1
  fi
done

rc=0
store=$(vm-tests/nix-nixpkgs.sh store) || rc=$?
if [ "$rc" -eq 3 ]; then
  if [ "${CI:-}" = true ]; then
    echo "nix-flake-check: FAIL: no shared nixpkgs tree (CI=true: nothing may skip)" >&2
    exit 1
  fi
  echo "nix-flake-check: skipped: no shared nixpkgs tree beside the clone"
  exit 0
elif [ "$rc" -ne 0 ]; then
  echo "nix-flake-check: preparing the nixpkgs tree failed" >&2
  exit 1
fi
tree=$(vm-tests/nix-nixpkgs.sh tree)
prepared=$(date +%s)
echo "nix-flake-check: nixpkgs 25.05 (+ stubs) at $store, ready after $((prepared - started)) s"

passed=0
failed=0
# Each part's wall time, printed after its results.
part_started=$prepared
part() {
  local now
  now=$(date +%s)
  echo "----  $1: $((now - part_started)) s"
  part_started=$now
}
pass() {
  passed=$((passed + 1))
  echo "ok    $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL  $1"
  if [ -n "${2:-}" ]; then printf '%s\n' "$2" | head -40 | sed 's/^/      /'; fi
  return 0
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# nix eval of FLAKE#ATTR with nixpkgs overridden; extra arguments go to nix eval. Stdout in
# $work/out, Nix's own notes filtered out of stderr into $work/err. Fails when the evaluation
# fails or prints anything else (a warning, a trace).
evaluate() {
  local flake=$1 attr=$2
  shift 2
  local status=0
  nix eval --json --no-write-lock-file --override-input nixpkgs "path:$store" \
    "$flake#$attr" "$@" >"$work/out" 2>"$work/raw-err" || status=$?
  grep -vE "^warning: Git tree '.*' is dirty$|^warning: not writing modified lock file of flake|^• Added input 'nixpkgs':$|^    'path:$store\?" \
    "$work/raw-err" >"$work/err" || true
  [ "$status" -eq 0 ] && [ ! -s "$work/err" ]
}

# Evaluates ATTR --apply F, which must give { "<output>" = drvPath; … }; checks each .drv
# exists and reports each output.
instantiate() {
  local label=$1 attr=$2 apply=$3
  if ! evaluate "$repo" "$attr" --apply "$apply"; then
    fail "$label: evaluation" "$(cat "$work/err")"
    return
  fi
  python3 -c '
import json, sys
for name, drv in sorted(json.load(sys.stdin).items()):
    print(f"{name}\t{drv}")
' <"$work/out" >"$work/drvs"
  # Written to the store (whichever store Nix is configured with)?
  cut -f2 "$work/drvs" | xargs nix-store --check-validity --print-invalid >"$work/invalid" 2>&1 || true
  while IFS=$'\t' read -r name drv; do
    if grep -qxF "$drv" "$work/invalid"; then
      fail "instantiate $name" "$drv was not written"
    else
      pass "instantiate $name"
      echo "$name $drv" >>"$work/instantiated"
    fi
  done <"$work/drvs"
}

# The apply functions see builtins only (no nixpkgs lib in scope).
per_system='ps: builtins.listToAttrs (builtins.concatLists (builtins.attrValues (builtins.mapAttrs (s: set: builtins.attrValues (builtins.mapAttrs (n: p: { name = "'
per_system_tail='.${s}.${n}"; value = p.drvPath; }) set)) ps)))'

# 1 + 2. Every output.
instantiate packages packages "${per_system}packages${per_system_tail}"
instantiate nixosConfigurations nixosConfigurations \
  'cs: builtins.listToAttrs (builtins.attrValues (builtins.mapAttrs (n: c: { name = "nixosConfigurations.${n}.config.system.build.toplevel"; value = c.config.system.build.toplevel.drvPath; }) cs))'
instantiate checks checks "${per_system}checks${per_system_tail}"
instantiate devShells devShells "${per_system}devShells${per_system_tail}"
instantiate formatter formatter \
  'fs: builtins.listToAttrs (builtins.attrValues (builtins.mapAttrs (s: f: { name = "formatter.${s}"; value = f.drvPath; }) fs))'
instantiate "nixosOptionsDoc" checks.x86_64-linux.options-doc \
  'c: { "options-doc optionsJSON" = c.optionsJSON.drvPath; "options-doc optionsCommonMark" = c.optionsCommonMark.drvPath; }'
part "instantiation"

# 3. No secret in the store. Every store path the instantiated outputs depend on — each .drv
# (builders, scripts, test scripts, generated files' text) and each input source (files the
# evaluation wrote: contracts, TOML, scripts; copies of source trees) — is read for a private
# key (a PEM block with its body), the test admin's and the examples' passwords, a JSON
# "password" field and a version-1 `bootstrap_credential`. Where a match is a file of the
# repository (its tracked text: docs and tests name the examples' password, migrate.rs names
# the v1 field) or of nixpkgs (its own test fixtures), it is theirs, public, and counted; a
# private key in the repository, and anything in what the evaluation generated, fails — but
# the test admin's password in the nixosTest drivers, whose test scripts log in with it.
cat >"$work/scan-secrets.py" <<'EOF'
import json, os, re, sys

closure_file, repo, tracked_file, nixpkgs, root = sys.argv[1:]
# A chroot store (`store = /some/dir`) keeps /nix/store/X at /some/dir/nix/store/X.
closure = [root + l.strip() for l in open(closure_file) if l.strip()]
nixpkgs = root + nixpkgs
tracked = set(l.rstrip("\n") for l in open(tracked_file))
test_password = json.load(open(os.path.join(repo, "vm-tests/nixos/lib/test-admin.json")))["password"]
# In a .drv the text of a string is escaped (\n, \"), so both forms are matched.
private_key = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:\\n|\s)+[A-Za-z0-9+/=]{40,}")
public_text = {
    "the test admin's password": re.compile(re.escape(test_password.encode())),
    "the examples' password": re.compile(rb"Example-Admin-Passphrase-2026"),
    'a JSON "password" field': re.compile(rb'\\*"password\\*"\s*:\s*\\*"'),
    "a version-1 bootstrap_credential": re.compile(rb"bootstrap_credential"),
}
in_test_driver = ("the test admin's password", 'a JSON "password" field')

def files(path):
    if os.path.isfile(path) and not os.path.islink(path):
        yield path, ""
    for root, _, names in os.walk(path):
        for n in names:
            f = os.path.join(root, n)
            if os.path.isfile(f) and not os.path.islink(f):
                yield f, os.path.relpath(f, path)

def same(a, b):
    try:
        return os.path.isfile(b) and open(a, "rb").read() == open(b, "rb").read()
    except OSError:
        return False

nixpkgs_by_name = None
def of_nixpkgs(f, top, rel):
    """Is f (rel inside the store path named top) a copy of a nixpkgs file?"""
    global nixpkgs_by_name
    if nixpkgs_by_name is None:
        nixpkgs_by_name = {}
        for root, dirs, names in os.walk(nixpkgs):
            for n in dirs + names:
                nixpkgs_by_name.setdefault(n, []).append(os.path.join(root, n))
    return any(same(f, os.path.join(t, rel) if rel else t) for t in nixpkgs_by_name.get(top, []))

found, theirs, allowed = [], {"repository": 0, "nixpkgs": 0}, []
scanned = paths = 0
for path in closure:
    if path == nixpkgs:
        continue  # the nixpkgs input itself (nix-eval reads its lib): upstream's
    paths += 1
    top = os.path.basename(path)[33:]
    driver = top.startswith("nixos-test-driver-plasmacloud-") and top.endswith(".drv")
    for f, rel in files(path):
        scanned += 1
        data = open(f, "rb").read()
        hits = []
        if private_key.search(data):
            hits.append("a private key")
        hits += [what for what, rx in public_text.items() if rx.search(data)]
        if not hits:
            continue
        if rel in tracked and same(f, os.path.join(repo, rel)):
            for what in hits:
                if what == "a private key":
                    found.append(f"{f}: a private key in the repository ({rel})")
                else:
                    theirs["repository"] += 1
            continue
        if not path.endswith(".drv") and of_nixpkgs(f, top, rel):
            theirs["nixpkgs"] += len(hits)
            continue
        for what in hits:
            if driver and what in in_test_driver:
                allowed.append(top)
            else:
                found.append(f"{f}: {what}")
print(f"scanned\t{scanned} files in {paths} store paths; {theirs['repository']} matches in the repository's own text, {theirs['nixpkgs']} in nixpkgs' own files (its test fixtures)")
for a in sorted(set(allowed)):
    print(f"allowed\t{a}")
for x in found:
    print(f"found\t{x}")
EOF
git ls-files >"$work/tracked"
# Where the store's files are on disk: a chroot store (`store = /dir` or `…?root=/dir`) keeps
# them under that directory.
store_setting=$(nix show-config 2>/dev/null | sed -n 's/^store = //p')
case "$store_setting" in
  /*) store_root=${store_setting%%\?*} ;;
  *root=/*) store_root=${store_setting#*root=}; store_root=${store_root%%&*} ;;
  *) store_root= ;;
esac
# scan_store OUTPUTS RESULT: the closure of the .drv files listed (last field of each line of
# OUTPUTS) scanned into RESULT (`scanned`, `allowed` and `found` lines); fails when the
# closure cannot be read.
scan_store() {
  nix-store -qR $(awk '{print $NF}' "$1") >"$work/closure" 2>"$work/closure-err" || true
  if [ -s "$work/closure-err" ] || [ ! -s "$work/closure" ]; then
    cat "$work/closure-err" >"$2"
    return 1
  fi
  python3 "$work/scan-secrets.py" "$work/closure" "$repo" "$work/tracked" "$store" "$store_root" >"$2"
}
if ! scan_store "$work/instantiated" "$work/secrets"; then
  fail "no secret in the store: the closure of the instantiated outputs" "$(cat "$work/secrets")"
else
  scanned=$(grep -m1 '^scanned' "$work/secrets" | cut -f2)
  if grep -q '^found' "$work/secrets"; then
    fail "no secret in what the evaluation put in the store ($scanned)" "$(grep '^found' "$work/secrets" | cut -f2)"
  else
    pass "no private key, password or token in what the evaluation put in the store ($scanned)"
  fi
  if grep -q '^allowed' "$work/secrets"; then
    pass "the test admin's password is only in the nixosTest drivers ($(grep '^allowed' "$work/secrets" | cut -f2 | tr '\n' ' '| sed 's/ $//'))"
  else
    fail "the test admin's password is in the nixosTest drivers (their checks log in with it)" "not found: does the scan still see the drivers?"
  fi
fi
part "no secret in the store"

# 4. Secrets given as store paths are refused, in the real NixOS evaluation of pxe-host.
refusal() {
  local label=$1 module=$2 expect=$3
  if ! evaluate "$repo" nixosConfigurations.pxe-host --apply "c: map (a: a.message) (builtins.filter (a: !a.assertion) (c.extendModules { modules = [ ($module) ]; }).config.assertions)"; then
    fail "$label" "$(cat "$work/err")"
  elif grep -q "$expect" "$work/out"; then
    pass "$label"
  else
    fail "$label" "no failed assertion naming $expect: $(cat "$work/out")"
  fi
}
refusal "pxe-host refuses a state directory in the store" \
  '{ lib, ... }: { services.pxe-server.stateDir = lib.mkForce "${builtins.storeDir}/00000000000000000000000000000000-state"; }' \
  "services.pxe-server.stateDir is a secret"
refusal "pxe-host refuses an IAM signing key in the store (firstboot + IAM enabled)" \
  '{ lib, ... }: { services.plasmacloud.firstboot.enable = true; services.chainfire.enable = true; services.flaredb.enable = true; services.iam.enable = true; services.iam.signingKeyFile = "${builtins.toFile "signing-key.pem" "not a key"}"; }' \
  "services.iam.signingKeyFile is a secret"
refusal "pxe-host refuses a CA key to import in the store" \
  '{ lib, ... }: { services.pxe-server.ca = { certFile = "/run/keys/ca.crt"; keyFile = "${builtins.toFile "ca.key" "not a key"}"; }; }' \
  "services.pxe-server.ca.keyFile is a secret"
refusal "pxe-host refuses a state directory in the store given in settings" \
  '{ lib, ... }: { services.pxe-server.settings.state-dir = "${builtins.storeDir}/00000000000000000000000000000000-state"; }' \
  "services.pxe-server.settings.state-dir is a secret"
refusal "pxe-host refuses a contract whose admin carries a password, not its hash" \
  '{ lib, ... }: { services.pxe-server.cluster = lib.mkForce (lib.recursiveUpdate (lib.importJSON c.config.services.pxe-server.cluster) { iam.admin.password_hash = "Example-Admin-Passphrase-2026"; }); }' \
  "iam.admin.password_hash is not an argon2id PHC string"

# A version-1 contract stops the evaluation with what `firstboot validate` says to change.
if evaluate "$repo" nixosConfigurations.node01 --apply 'c: (c.extendModules { modules = [ ({ lib, ... }: { services.plasmacloud.firstboot.contract = lib.mkForce ((lib.importJSON c.config.services.plasmacloud.firstboot.contract) // { version = 1; iam.bootstrap_credential = "/etc/plasmacloud/iam-admin.json"; }); }) ]; }).config.system.build.toplevel.drvPath'; then
  fail "a version-1 contract is refused at evaluation" "node01 instantiated with it"
elif grep -q "firstboot/contract/src/migrate.rs" "$work/err" && grep -q "iam.bootstrap_credential: replace it with" "$work/err"; then
  pass "a version-1 contract is refused at evaluation, with firstboot validate's advice"
else
  fail "a version-1 contract is refused at evaluation, with firstboot validate's advice" "$(cat "$work/err")"
fi

# Another contract path: every unit of the chain (and cluster-ready.target) runs only where it is.
if evaluate "$repo" nixosConfigurations.node01 --apply 'c: let u = (c.extendModules { modules = [ { services.plasmacloud.firstboot.contractPath = "/etc/plasmacloud/other.json"; } ]; }).config.systemd.units; in builtins.filter (n: builtins.match "(.*\n)?ConditionPathExists=\nConditionPathExists=/etc/plasmacloud/other.json\n.*" u.${n}.text == null) [ "firstboot-disk.service" "firstboot-enroll.service" "firstboot-configure.service" "chainfire.service" "chainfire-cluster-join.service" "flaredb.service" "flaredb-cluster-join.service" "iam.service" "iam-initial-setup.service" "cluster-health-check.service" "cluster-ready.target" ]'; then
  if [ "$(cat "$work/out")" = "[]" ]; then
    pass "another contract path moves ConditionPathExists= of every unit of the chain"
  else
    fail "another contract path moves ConditionPathExists= of every unit of the chain" "not moved: $(cat "$work/out")"
  fi
else
  fail "another contract path moves ConditionPathExists= of every unit of the chain" "$(cat "$work/err")"
fi
part "refusals"

# 5. docs/options.md.
if evaluate "$repo" checks.x86_64-linux.options-doc.markdown; then
  python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' <"$work/out" >"$work/options.md"
  if [ "$write_options_doc" = 1 ]; then
    cp "$work/options.md" docs/options.md
    pass "docs/options.md written"
  elif diff -u docs/options.md "$work/options.md" >"$work/options.diff"; then
    pass "docs/options.md matches the modules' options"
  else
    fail "docs/options.md matches the modules' options (run vm-tests/nix-flake-check.sh --write-options-doc)" "$(cat "$work/options.diff")"
  fi
else
  fail "render the options documentation" "$(cat "$work/err")"
fi
part "options doc"

# 6. The test scripts, as nixpkgs' nixos/lib/testing/driver.nix checks them when it builds
# the driver: machine names pythonized, one `name: Machine;` per node and `vlanN: VLan;` per
# VLAN after test-script-prepend.py for mypy; the driver's symbols plus the machine names as
# pyflakes builtins. lint_suites FLAKE writes one line per check to $work/lint
# ("ok|FAIL<TAB>check<TAB>file with the output").
driver_src="$tree/nixos/lib/test-driver/src"
suites_apply='
  cs:
  let
    pythonize = name:
      let
        head = builtins.substring 0 1 name;
        tail = builtins.substring 1 (-1) name;
        ok = re: c: builtins.match re c != null;
        chars = s: builtins.genList (i: builtins.substring i 1 s) (builtins.stringLength s);
      in
      (if ok "[A-z_]" head then head else "_")
      + builtins.concatStringsSep "" (map (c: if ok "[A-z0-9_]" c then c else "_") (chars tail));
    suite = c:
      let
        nodes = builtins.attrValues c.config.nodes;
        hostNames = map (m: m.system.name) nodes;
        names = hostNames ++ (if builtins.length hostNames == 1 && !builtins.elem "machine" hostNames then [ "machine" ] else [ ]);
        vlans = builtins.concatLists (map (m: m.virtualisation.vlans ++ map (i: i.vlan) (builtins.attrValues m.virtualisation.interfaces)) nodes);
      in
      {
        script = c.config.testScriptString;
        machines = map pythonize names;
        vlans = builtins.sort builtins.lessThan (builtins.attrNames (builtins.listToAttrs (map (v: { name = toString v; value = null; }) vlans)));
        skip = (if c.config.skipLint then "skipLint " else "") + (if c.config.skipTypeCheck then "skipTypeCheck" else "");
      };
  in
  builtins.mapAttrs (n: suite) (builtins.removeAttrs cs (builtins.filter (n: !(cs.${n} ? config && cs.${n}.config ? testScriptString)) (builtins.attrNames cs)))
'
# The driver's own symbols: the keyword names of `general_symbols = dict(...)` in
# Driver.test_symbols (what its generate-driver-symbols writes for pyflakes).
driver_symbols=$(python3 - "$driver_src/test_driver/driver.py" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "general_symbols" for t in node.targets):
        print(",".join(k.arg for k in node.value.keywords))
        break
else:
    sys.exit("no general_symbols in " + sys.argv[1])
EOF
)
# mypy reads the driver's sources as nixpkgs' build reads the installed driver: their own
# errors and their third-party imports are not the test script's.
cat >"$work/mypy.ini" <<'EOF'
[mypy]
[mypy-test_driver.*]
ignore_errors = True
[mypy-colorama.*,ptpython.*,junit_xml.*,IPython.*,remote_pdb.*]
ignore_missing_imports = True
EOF
mypy_cache=/var/cache/plasmacloud/mypy-nixos-test-driver
mkdir -p "$mypy_cache" 2>/dev/null || mypy_cache="$work/mypy-cache"

lint_suites() {
  local flake=$1 suite dir
  : >"$work/lint"
  if ! evaluate "$flake" checks.x86_64-linux --apply "$suites_apply"; then
    cp "$work/err" "$work/lint-eval"
    printf 'FAIL\tthe test scripts: evaluation\t%s\n' "$work/lint-eval" >>"$work/lint"
    return
  fi
  cp "$work/out" "$work/suites.json"
  for suite in $(python3 -c 'import json, sys; print(" ".join(sorted(json.load(sys.stdin))))' <"$work/suites.json"); do
    dir="$work/suite-$suite"
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 - "$work/suites.json" "$suite" "$dir" "$tree/nixos/lib/test-script-prepend.py" <<'EOF'
import json, sys
suites, name, out, prepend = sys.argv[1:]
s = json.load(open(suites))[name]
open(f"{out}/test-script", "w").write(s["script"])
with open(f"{out}/testScriptWithTypes", "w") as f:
    f.write(open(prepend).read())
    f.write(" ".join(f"{m}: Machine;" for m in s["machines"]) + "\n")
    f.write(" ".join(f"vlan{v}: VLan;" for v in s["vlans"]) + "\n")
    f.write(s["script"])
open(f"{out}/machines", "w").write(",".join(s["machines"]))
open(f"{out}/skip", "w").write(s["skip"])
EOF
    if [ -s "$dir/skip" ]; then
      printf 'FAIL\ttestScript of %s: no skipLint/skipTypeCheck (nixpkgs: never commit them)\t%s\n' "$suite" "$dir/skip" >>"$work/lint"
    fi
    if PYFLAKES_BUILTINS="$(cat "$dir/machines"),$driver_symbols" pyflakes3 "$dir/test-script" >"$dir/pyflakes" 2>&1; then
      printf 'ok\ttestScript of %s: pyflakes\t%s\n' "$suite" "$dir/pyflakes" >>"$work/lint"
    else
      printf 'FAIL\ttestScript of %s: pyflakes\t%s\n' "$suite" "$dir/pyflakes" >>"$work/lint"
    fi
    if (cd "$dir" && MYPYPATH="$driver_src" mypy --config-file "$work/mypy.ini" --cache-dir "$mypy_cache" \
      --no-implicit-optional --pretty --no-color-output testScriptWithTypes) >"$dir/mypy" 2>&1; then
      printf 'ok\ttestScript of %s: mypy\t%s\n' "$suite" "$dir/mypy" >>"$work/lint"
    else
      printf 'FAIL\ttestScript of %s: mypy\t%s\n' "$suite" "$dir/mypy" >>"$work/lint"
    fi
  done
}

lint_suites "$repo"
while IFS=$'\t' read -r status label file; do
  if [ "$status" = ok ]; then pass "$label"; else fail "$label" "$(cat "$file")"; fi
done <"$work/lint"
part "test scripts"

# 7. The step can fail. A copy of the repository (the files the flake sees) gets one mistake
# at a time in a module; instantiating a node must then fail and name what is wrong.
copy="$work/repo"
mkdir -p "$copy"
git ls-files -z --cached | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$copy"
cp "$copy/nixos/iam.nix" "$work/iam.nix.orig"
mistake() {
  local label=$1 expect=$2 edit=$3
  cp "$work/iam.nix.orig" "$copy/nixos/iam.nix"
  python3 -c "
import sys
p = sys.argv[1]
s = open(p).read()
anchor = '      (service.account cfg \"iam\" \"PlasmaCloud IAM server\")\n'
assert anchor in s, 'the anchor for the deliberate mistakes is gone from nixos/iam.nix'
open(p, 'w').write(s.replace(anchor, sys.argv[2] + '\n' + anchor))
" "$copy/nixos/iam.nix" "$edit"
  if evaluate "path:$copy" nixosConfigurations.node01.config.system.build.toplevel.drvPath; then
    fail "the step fails on $label" "node01 still instantiated"
  elif grep -qF -- "$expect" "$work/err"; then
    pass "the step fails on $label"
  else
    fail "the step fails on $label (naming $expect)" "$(cat "$work/err")"
  fi
}
mistake "an undefined option in a module" "services.iam.noSuchOption' does not exist" \
  '      { services.iam.noSuchOption = true; }'
mistake "a wrong type in a module" "services.iam.port' is not of type" \
  '      { services.iam.port = "8080"; }'
mistake "a warning from a module" "trace: evaluation warning: services.iam: deliberate" \
  '      { warnings = [ "services.iam: deliberate" ]; }'

# A private key a module writes into the store (a file in /etc, from `text`) is found by the
# scan of part 3. (The header is split here so that this script holds no key block itself.)
cp "$work/iam.nix.orig" "$copy/nixos/iam.nix"
python3 -c "
import sys
p = sys.argv[1]
s = open(p).read()
anchor = '      (service.account cfg \"iam\" \"PlasmaCloud IAM server\")\n'
leak = '      { environment.etc.\"plasmacloud/leak.pem\".text = \"-----BEGIN \" + \"PRIVATE KEY-----\\\\n' + 'QUJD' * 16 + '\\\\n-----END PRIVATE KEY-----\\\\n\"; }\n'
open(p, 'w').write(s.replace(anchor, leak + anchor))
" "$copy/nixos/iam.nix"
if ! evaluate "path:$copy" nixosConfigurations.node01.config.system.build.toplevel.drvPath; then
  fail "the step fails on a private key in the store (node01 with it must still instantiate)" "$(cat "$work/err")"
else
  echo "node01-with-a-key $(python3 -c 'import json, sys; print(json.load(sys.stdin))' <"$work/out")" >"$work/leak-outputs"
  if scan_store "$work/leak-outputs" "$work/leak-secrets" && grep -q '^found	.*leak.pem.*: a private key$' "$work/leak-secrets"; then
    pass "the step fails on a private key in the store"
  else
    fail "the step fails on a private key in the store" "$(cat "$work/leak-secrets")"
  fi
fi

cp "$work/iam.nix.orig" "$copy/nixos/iam.nix"

# A typo in a test script: a method the driver's Machine lacks (mypy) and an undefined name
# (pyflakes), in the checks both suites prepend.
cat >>"$copy/vm-tests/nixos/lib/checks.py" <<'EOF'


def deliberate_typos(m: Machine) -> None:
    m.succeeed("true")
    print(undefined_name)
EOF
lint_suites "path:$copy"
for check in "pyflakes:undefined name 'undefined_name'" 'mypy:"Machine" has no attribute "succeeed"'; do
  tool=${check%%:*}
  expect=${check#*:}
  if grep -q "^FAIL	testScript of cluster-bootstrap: $tool	" "$work/lint" &&
    grep -qF -- "$expect" "$work/suite-cluster-bootstrap/$tool"; then
    pass "the step fails on a typo in a test script ($tool)"
  else
    fail "the step fails on a typo in a test script ($tool: $expect)" "$(cat "$work/lint" "$work/suite-cluster-bootstrap/$tool" 2>&1)"
  fi
done

part "the step can fail"

finished=$(date +%s)
echo
echo "instantiated: $(wc -l <"$work/instantiated" 2>/dev/null || echo 0) outputs"
echo "$passed passed, $failed failed in $((finished - started)) s"
[ "$failed" -eq 0 ]
