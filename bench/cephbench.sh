#!/usr/bin/env bash
# bench/cephbench.sh — the store on Ceph beside the embedded store: commit
# v1, commit v2 on top, check v2 out from a cold cache; wall time, S3
# requests and bytes. Starts its own single-host Ceph (root, Debian's
# ceph-mon ceph-osd radosgw: make deps) on loopback through the test
# harness (store/s3/s3test). Prints a markdown table with the machine
# state on stdout. Needs the corpus (SIM_CORPUS, default /var/cache/sim/corpus).
#
#   bench/cephbench.sh [OUT.md]     (also writes the table to OUT.md)
set -euo pipefail
OUT=${1:-/dev/null}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$(dirname "$0")/.."
exec > >(tee "$OUT")
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at start, $(date -u +%FT%TZ)"
echo
SIM_CEPH_BENCH=1 go test -v -count=1 -run '^TestCephBench$' ./cmd/sim/ 2>&1 | grep -E '^\|' 
echo
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
