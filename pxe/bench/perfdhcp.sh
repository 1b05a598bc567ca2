#!/usr/bin/env bash
# pxe/bench/perfdhcp.sh: 10,000 distinct DHCP clients at once against Kea and pxe-server, side by
# side, with Kea's own load generator (root; Debian packages kea-dhcp4-server, kea-admin, curl,
# python3, iproute2).
#
#   pxe/bench/perfdhcp.sh            # CLIENTS=10000 by default
#
# Both servers run alone in turn on the same namespace pair (a veth, server 10.96.0.1/16, perfdhcp
# 10.96.0.2), with a 12,288-address pool and one-hour leases, persisting every lease to disk:
# - Kea 2.2 `kea-dhcp4`, memfile lease database with `persist: true` (each lease appended to its
#   CSV file and flushed to the kernel; Kea calls no fsync), its default single-threaded mode;
# - pxe-server, full mode: OFFERs written to its lease log unsynced, every ACK fdatasync'ed
#   before it is sent (a batch of REQUESTs that arrived together shares one fdatasync).
# perfdhcp runs its `avalanche` scenario: one DISCOVER from each of the CLIENTS clients at once,
# each client retransmitting with back-off until its 4-way exchange (DISCOVER, OFFER, REQUEST,
# ACK) is done; `-u` counts non-unique addresses. Reported per server: 4-way exchanges per second
# (perfdhcp's rate), seconds until every client holds a lease, drops, non-unique addresses, leases
# on disk (distinct addresses, addresses held by two MACs), and, after a restart of the server,
# the leases it holds again (Kea: its assigned-addresses statistic, recounted from the lease file
# at start; pxe-server: /v1/status). Prints BENCH lines and the ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/plasmacloud/target}"
N="${CLIENTS:-10000}"
for t in kea-dhcp4 perfdhcp curl python3 ip; do
  command -v "$t" >/dev/null || { echo "perfdhcp.sh: needs $t (vm-tests/install-deps)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "perfdhcp.sh: run as root (network namespaces)" >&2; exit 1; }
cargo build --release -q -p pxe-server -p netboot-image >&2
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/perfdhcp-bench.XXXXXX)
S="pdb-s-$$"; C="pdb-c-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link add vs type veth peer name vc netns "$C"
ip -n "$S" addr add 10.96.0.1/16 dev vs
ip -n "$C" addr add 10.96.0.2/16 dev vc
for n in "$S" "$C"; do ip -n "$n" link set lo up; done
ip -n "$S" link set vs up; ip -n "$C" link set vc up
echo "perfdhcp.sh: $N clients, work dir $work, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# perfdhcp's avalanche against 10.96.0.1; prints "rate secs drops nonunique".
run_perfdhcp() {
  local out="$work/perfdhcp-$1.out"
  ip netns exec "$C" timeout 300 perfdhcp -4 --scenario avalanche -R "$N" -u -l vc 10.96.0.1 \
    > "$out" 2>&1 || true
  python3 - "$out" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rate = re.search(r"Rate: ([0-9.]+) 4-way", t)
took = re.search(r"It took (\d+):(\d+):([0-9.]+) to provision (\d+) clients", t)
drops = sum(int(x) for x in re.findall(r"^drops: (\d+)", t, re.M))
nonu = sum(int(x) for x in re.findall(r"non unique addresses: (\d+)", t))
secs = int(took.group(1)) * 3600 + int(took.group(2)) * 60 + float(took.group(3)) if took else float("nan")
print(rate.group(1) if rate else "nan", "%.2f" % secs, drops, nonu, took.group(4) if took else 0)
EOF
}

# --- Kea ------------------------------------------------------------------------------------
cat > "$work/kea.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["vs"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0},
  "control-socket": {"socket-type": "unix", "socket-name": "$work/kea.sock"},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.96.0.0/16", "pools": [{"pool": "10.96.1.0 - 10.96.48.255"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "$work/kea.log"}]}]
}}
EOF
start_kea() {
  KEA_PIDFILE_DIR="$work" KEA_LOCKFILE_DIR="$work" ip netns exec "$S" kea-dhcp4 -c "$work/kea.json" \
    >> "$work/kea.out" 2>&1 &
  kea_pid=$!; pids+=("$kea_pid")
  for _ in $(seq 100); do [ -S "$work/kea.sock" ] && return 0; sleep 0.1; done
  echo "perfdhcp.sh: Kea did not start: $(cat "$work/kea.out")" >&2; exit 1
}
kea_assigned() {
  python3 - "$work/kea.sock" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(json.dumps({"command": "statistic-get", "arguments": {"name": "subnet[1].assigned-addresses"}}).encode())
buf = b""
while True:
    d = s.recv(65536)
    if not d: break
    buf += d
    try: v = json.loads(buf); break
    except ValueError: continue
print(v["arguments"]["subnet[1].assigned-addresses"][0][0])
EOF
}
start_kea
read -r k_rate k_secs k_drops k_nonu k_n < <(run_perfdhcp kea)
# The lease file: the last record of each address; addresses whose last two holders differ
# would be duplicates.
read -r k_disk k_dup < <(python3 - "$work/kea-leases4.csv" <<'EOF'
import csv, sys
last = {}
for row in csv.DictReader(open(sys.argv[1])):
    if row["state"] == "0" and int(row["valid_lifetime"]) > 0:
        last[row["address"]] = row["hwaddr"]
macs = {}
for a, m in last.items():
    macs.setdefault(m, []).append(a)
print(len(last), sum(1 for v in macs.values() if len(v) > 1))
EOF
)
kill "$kea_pid"; wait "$kea_pid" 2>/dev/null || true
rm -f "$work/kea.sock"
start_kea
k_back=$(kea_assigned)
kill "$kea_pid"; wait "$kea_pid" 2>/dev/null || true
echo "BENCH perfdhcp kea-dhcp4: $k_rate 4-way exchanges/s, all $k_n of $N leased in $k_secs s, drops $k_drops, non-unique $k_nonu, on disk $k_disk distinct addresses ($k_dup MACs with two), after restart $k_back assigned"

# --- pxe-server -----------------------------------------------------------------------------
python3 - examples/cluster-3.json "$work/cluster-config.json" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
v["boot_server"]["address"] = "10.96.0.1"
for i, n in enumerate(v["nodes"]):
    n["ipv4"] = "10.96.0.%d" % (11 + i)
json.dump(v, open(sys.argv[2], "w"), indent=2)
EOF
head -c 65536 /dev/urandom > "$work/vmlinuz"; head -c 65536 /dev/urandom > "$work/initrd"
"$bin/netboot-image" bundle --cluster "$work/cluster-config.json" --kernel "$work/vmlinuz" \
  --initrd "$work/initrd" --out "$work/bundle" > /dev/null
state="$work/pxe-state"
"$bin/pxe-server" pki init --state-dir "$state" > /dev/null
"$bin/pxe-server" pki issue --operator bench --state-dir "$state" --out "$work/op" > /dev/null
pxe_starts=0
start_pxe() {
  pxe_starts=$((pxe_starts + 1))
  local log="$work/pxe-$pxe_starts.log"
  # Its per-packet info lines off (Kea logs at WARN too); the ready line kept.
  RUST_LOG=warn,pxe_server=info,pxe_server::dhcp=warn,pxe_server::state=warn,pxe_server::events=warn ip netns exec "$S" "$bin/pxe-server" serve --interface vs --mode full \
    --cluster "$work/cluster-config.json" --bundle "$work/bundle" \
    --dhcp-range 10.96.1.0-10.96.48.255 --ipxe-dir /usr/lib/ipxe --state-dir "$state" \
    --ipv6-ra off --lease-secs 3600 > "$log" 2>&1 &
  pxe_pid=$!; pids+=("$pxe_pid")
  for _ in $(seq 300); do grep -q "pxe-server ready" "$log" 2>/dev/null && return 0; sleep 0.1; done
  echo "perfdhcp.sh: pxe-server did not start: $(tail -5 "$log")" >&2; exit 1
}
pxe_leases() {
  ip netns exec "$S" curl -sS --cacert "$work/op/ca.crt" --cert "$work/op/operator.crt" \
    --key "$work/op/operator.key" https://10.96.0.1:8082/v1/status > "$work/status.json"
  python3 -c '
import json, sys
v = json.load(sys.stdin)
b = [l for l in v["leases"] if l["state"] == "bound"]
print(len(b), len(b) - len({l["ip"] for l in b}))' < "$work/status.json"
}
start_pxe
read -r p_rate p_secs p_drops p_nonu p_n < <(run_perfdhcp pxe)
read -r p_disk p_dup < <(python3 - "$state/leases.log" <<'EOF'
import json, sys
last = {}
for line in open(sys.argv[1]):
    try: l = json.loads(line)
    except ValueError: continue
    last[l["mac"]] = l
bound = [l for l in last.values() if l["state"] == "bound"]
print(len({l["ip"] for l in bound}), len(bound) - len({l["ip"] for l in bound}))
EOF
)
kill "$pxe_pid"; wait "$pxe_pid" 2>/dev/null || true
start_pxe
read -r p_back p_back_dup < <(pxe_leases)
kill "$pxe_pid"; wait "$pxe_pid" 2>/dev/null || true
echo "BENCH perfdhcp pxe-server: $p_rate 4-way exchanges/s, all $p_n of $N leased in $p_secs s, drops $p_drops, non-unique $p_nonu, on disk $p_disk distinct addresses ($p_dup held twice), after restart $p_back bound ($p_back_dup duplicate addresses)"
python3 -c "print('BENCH perfdhcp ratio pxe-server/kea: exchanges/s %.2fx, time to all leased %.2fx (lower is faster)' % ($p_rate / $k_rate, $p_secs / $k_secs))"
