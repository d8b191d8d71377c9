#!/usr/bin/env bash
# bench/metalbench.sh [OUTFILE] — the bare-metal install figures, from real
# VMs (qemu TCG, 1 vCPU, 1 GiB, virtio disk and NIC, sim serve on the host's
# loopback through qemu user networking): initrd size; time from VM power-on
# to installed-and-powered-off for the bootable image (BIOS, UEFI), and for
# 4 VMs at once; bytes the server sent per node (the node's received wire
# bytes, as it reports them in its final status). Prints one markdown table
# (stdout and OUTFILE, default bench/metalresults.md).
#
# It runs the VM tests (cmd/sim/metal_test.go: TestMetalVM's single,
# TestMetalFour, TestMetalISO's iso; one at a time, -parallel 1, so that no
# VM of another test shares the cores) and collects the FIGURE lines it logs, so the figures are
# those of an install that was checked end to end (the installed disk
# booted and reported its hostname, post-install marker and override).
# Needs root, make metal-deps and make bootable; skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/metalresults.md}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if [ "$(id -u)" != 0 ]; then echo "metalbench: not root, skipping" >&2; exit 0; fi
RUN='^(TestMetalVM|TestMetalFour|TestMetalISO)$/^(single|four-at-once|iso)$'
echo "metalbench: go test -parallel 1 -run '$RUN' (several minutes of qemu TCG)" >&2
if ! CGO_ENABLED=0 go test -count=1 -timeout 60m -parallel 1 -v -run "$RUN" ./cmd/sim >"$LOG" 2>&1; then
	tail -40 "$LOG" >&2
	echo "metalbench: the VM test failed; no figures" >&2
	exit 1
fi
if grep -q -- '--- SKIP: TestMetal' "$LOG"; then
	grep -A2 -- '--- SKIP' "$LOG" >&2
	exit 0
fi
{
	echo "| measurement (qemu TCG, 1 vCPU) | figure |"
	echo "|---|---|"
	sed -n 's/.*FIGURE \([^:]*\): \(.*\)$/| \1 | \2 |/p' "$LOG"
} | tee "$OUT"
