#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (Debian's nix-bin is enough):
#   1. `nix-instantiate --parse` on every .nix file of the repository;
#   2. pure tests (vm-tests/nixos/eval/pure.nix): nixos/lib/contract.nix on the example
#      contracts, the nodes' disko layouts, the version readers;
#   3. module type checks (vm-tests/nixos/eval/modules.nix): `lib.evalModules` over our NixOS
#      modules with nixpkgs' lib alone, and the flake's outputs against a stand-in nixpkgs
#      (vm-tests/nixos/eval/flake-outputs.nix) — with nixpkgs' lib from NIXPKGS_LIB, else the
#      shared nixpkgs tree's (vm-tests/nix-nixpkgs.sh), else /tmp/nixpkgs-lib/lib; skipped
#      without one by hand, a failure under CI=true;
#   4. with the same lib: the nixosTest suites' Python test scripts, rendered with a stand-in
#      pkgs, compile.
# Prints every test, then `N passed, M failed` (and what was skipped); exits 1 on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# No build users here (nothing is built); without this Nix warns on stderr about a missing
# nixbld group on every call.
export NIX_CONFIG="${NIX_CONFIG:-}"$'\nbuild-users-group ='

if ! command -v nix-instantiate >/dev/null; then
  echo "nix-eval-tests: nix-instantiate not found (apt-get install nix-bin)" >&2
  exit 1
fi

passed=0
failed=0
skipped=()
pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() { failed=$((failed + 1)); echo "FAIL  $1"; [ -n "${2:-}" ] && echo "$2" | sed 's/^/      /'; return 0; }

# 1. Parse.
while IFS= read -r -d '' f; do
  if out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    pass "parse ${f#./}"
  else
    fail "parse ${f#./}" "$out"
  fi
done < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' -print0 | sort -z)

# Runs a test file (a list of { name, expected, actual }) and reports each test. Anything
# Nix prints on stderr (a warning, a trace) or output that is not the list fails the file.
run_tests() {
  local label=$1
  shift
  local json err
  err=$(mktemp)
  if ! json=$(nix-instantiate --eval --strict --json "$@" 2>"$err"); then
    fail "$label: evaluation" "$(cat "$err")"
    rm -f "$err"
    return
  fi
  if [ -s "$err" ]; then
    fail "$label: evaluation printed nothing" "$(cat "$err")"
  fi
  rm -f "$err"
  while IFS=$'\t' read -r status name detail; do
    if [ "$status" = ok ]; then pass "$label: $name"; else fail "$label: $name" "$detail"; fi
  done < <(python3 -c '
import json, sys
try:
    tests = json.load(sys.stdin)
except ValueError as e:
    print("fail\tthe tests\tnot a JSON list of tests: %s" % e)
    sys.exit(0)
for t in tests:
    status = "ok" if t["ok"] else "fail"
    detail = "" if t["ok"] else "expected %s, got %s" % (json.dumps(t["expected"]), json.dumps(t["actual"]))
    print("%s\t%s\t%s" % (status, t["name"], detail))
' <<<"$json")
}

report='map (t: { inherit (t) name expected actual; ok = t.expected == t.actual; })'

# 2. Pure tests.
run_tests pure -E "$report (import ./vm-tests/nixos/eval/pure.nix)"

# 3. Module type checks with nixpkgs' lib, when it is here.
lib_dir=${NIXPKGS_LIB:-}
if [ -z "$lib_dir" ]; then
  if tree=$(vm-tests/nix-nixpkgs.sh tree 2>/dev/null); then
    lib_dir=$tree/lib
  else
    lib_dir=/tmp/nixpkgs-lib/lib
  fi
fi
if [ -f "$lib_dir/default.nix" ]; then
  run_tests modules --arg lib "import $lib_dir" \
    -E "{ lib }: $report (import ./vm-tests/nixos/eval/modules.nix { inherit lib; })"
  run_tests flake --arg lib "import $lib_dir" \
    -E "{ lib }: $report (import ./vm-tests/nixos/eval/flake-outputs.nix { inherit lib; })"
  # 4. The suites' Python test scripts, rendered with a stand-in pkgs, must compile.
  scripts_out=$(mktemp)
  scripts_err=$(mktemp)
  if nix-instantiate --eval --strict --json --arg lib "import $lib_dir" \
    vm-tests/nixos/eval/test-scripts.nix >"$scripts_out" 2>"$scripts_err" && [ ! -s "$scripts_err" ]; then
    while IFS=$'\t' read -r status name detail; do
      if [ "$status" = ok ]; then pass "$name"; else fail "$name" "$detail"; fi
    done < <(python3 -c '
import json, sys
for suite, text in json.load(sys.stdin).items():
    try:
        compile(text, suite + ".testScript", "exec")
        print("ok\ttestScript of %s compiles as Python\t" % suite)
    except SyntaxError as e:
        print("fail\ttestScript of %s compiles as Python\t%s" % (suite, e))
' <"$scripts_out")
  else
    fail "render the test scripts" "$(cat "$scripts_err")"
  fi
  rm -f "$scripts_out" "$scripts_err"
elif [ "${CI:-}" = true ]; then
  fail "module type checks and test-script rendering: no nixpkgs lib (no shared nixpkgs tree, no NIXPKGS_LIB; CI=true: nothing may skip)"
else
  skipped+=("module type checks and test-script rendering: no nixpkgs lib (no shared nixpkgs tree beside the clone, no NIXPKGS_LIB, nothing at $lib_dir)")
fi

echo
echo "$passed passed, $failed failed"
for s in "${skipped[@]}"; do echo "skipped: $s"; done
[ "$failed" -eq 0 ]
