#!/usr/bin/env bash
# pxe-server benchmarks against dnsmasq, tftpd-hpa and nginx (root; Debian packages: dnsmasq,
# tftpd-hpa, atftp, curl, nginx, python3, qemu-system-x86, ipxe-qemu, linux-image-amd64,
# busybox-static). Prints BENCH lines with figures and ratios.
#   pxe/bench/run.sh            # all
#   pxe/bench/run.sh bench_tftp # one of bench_boot bench_tftp bench_http bench_dhcp_burst
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/plasmacloud/target-pxe}"
cargo test --release -p pxe-server --test bench -- --ignored --nocapture --test-threads 1 "$@" 2>&1 | grep -oE 'BENCH.*|panicked.*|test result.*'
