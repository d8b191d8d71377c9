#!/usr/bin/env bash
# bench/monitorbench.sh [OUTFILE] — the live view under load (issue #13):
# 1,000 simulated agents (bench/monitorload: goroutines speaking the real
# agent protocol over loopback: each holds its long poll for orders open
# and POSTs /v1/agent/report every 10 s, every third report changing its
# state) against a real `sim serve` whose registry holds the 1,000 nodes,
# with one GET /v1/events stream open (the page) and GET /metrics scraped
# every 15 s (Prometheus). Measured over 60 s once
# every agent runs:
#   - the server's CPU (utime+stime of its process, /proc/PID/stat)
#     target: under 0.1 core
#   - report → event latency: from just before a state-changing report is
#     sent to its node event arriving on the stream (p50, p95, max)
#     target: p95 under 1 s
# Prints ONE markdown table (stdout and OUTFILE, default
# bench/monitorresults.md) with the load average; progress on stderr.
# MONITORBENCH_AGENTS, _EVERY, _DURATION change the load (1000, 10s, 60s).
# Agents use the server's admin token (--token-file), which speaks for any
# node. SIM: the sim binary (default ./bin/sim).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/monitorresults.md}
SIM=${SIM:-./bin/sim}
GO=${GO:-go}
AGENTS=${MONITORBENCH_AGENTS:-1000}
EVERY=${MONITORBENCH_EVERY:-10s}
DURATION=${MONITORBENCH_DURATION:-60s}

exec {ERRFD}>&2
log() { printf '[monitorbench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

if [ ! -x "$SIM" ] && [ "$SIM" = ./bin/sim ]; then make -s build >&2; fi
[ -x "$SIM" ] || die "sim binary not found at '$SIM'"
command -v python3 >/dev/null || die "python3 is needed to format the table"
W=$(mktemp -d /var/tmp/sim-monitorbench.XXXXXX)
SRV=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$SRV" ]; then kill -TERM "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; fi
	if [ "${MONITORBENCH_KEEP:-0}" = 1 ]; then log "kept $W"; else rm -rf --one-file-system "$W"; fi
	[ "$rc" -eq 0 ] || log "FAILED (exit $rc); server log: $W/serve.log (MONITORBENCH_KEEP=1 keeps it)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building bench/monitorload"
$GO build -o "$W/monitorload" ./bench/monitorload

S() { "$SIM" --store "$W/store" "$@"; }
S init >/dev/null
mkdir -p "$W/img/etc"
echo "monitorbench" >"$W/img/etc/motd"
S commit "$W/img" --image deb -m "monitorbench image" >/dev/null 2>&1
log "registering $AGENTS nodes"
"$W/monitorload" register -store "$W/store" -agents "$AGENTS" -image deb
head -c 24 /dev/urandom | base64 >"$W/token"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SIM" --store "$W/store" serve --listen "127.0.0.1:$port" --token-file "$W/token" --bt-listen 127.0.0.1:0 2>"$W/serve.log" &
SRV=$!
for _ in $(seq 100); do grep -q serving "$W/serve.log" 2>/dev/null && break; sleep 0.1; done
grep -q serving "$W/serve.log" || die "sim serve did not start: $(cat "$W/serve.log")"

log "$AGENTS agents reporting every $EVERY; measuring $DURATION after the ramp"
"$W/monitorload" run -url "http://127.0.0.1:$port" -token-file "$W/token" -pid "$SRV" \
	-agents "$AGENTS" -every "$EVERY" -duration "$DURATION" >"$W/result.json"
load=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$W/result.json" "$load" "$(nproc)" "$(date +%F)" <<'EOF' | tee "$OUT"
import json, sys
r = json.load(open(sys.argv[1]))
load, cores, day = sys.argv[2], sys.argv[3], sys.argv[4]
ok = lambda c: "✅" if c else "❌"
print(f"### bench/monitorbench.sh, {day}: {r['agents']:,} agents reporting every {r['every_s']:.0f} s, one GET /v1/events stream, {r['window_s']:.0f} s measured")
print()
print("| measurement | sim serve | target |")
print("|---|---|---|")
print(f"| server CPU over the window | {r['server_cores']:.3f} core ({r['server_cpu_s']:.2f} s in {r['window_s']:.0f} s) | < 0.1 core {ok(r['server_cores'] < 0.1)} |")
print(f"| report → event on the open stream, state changes (n = {r['changes_seen']:,} of {r['changes']:,}) | p50 {r['latency_p50_ms']:.1f} ms, p95 {r['latency_p95_ms']:.1f} ms, max {r['latency_max_ms']:.1f} ms | p95 < 1 s {ok(r['changes_seen'] == r['changes'] and r['changes'] > 0 and r['latency_p95_ms'] < 1000)} |")
print(f"| report → event, every report | p95 {r['all_reports_latency_p95_ms']:.1f} ms | |")
print(f"| reports answered | {r['reports']:,} ({r['reports_per_s']:.1f}/s in the window), {r['report_errors']} errors{(': ' + r['first_error']) if r.get('first_error') else ''} | |")
print(f"| long polls answered, node events streamed, snapshots | {r['polls']:,}, {r['events']:,}, {r['snapshots']} | |")
print(f"| GET /metrics every 15 s meanwhile | {r['scrapes']} scrapes, slowest {r['scrape_max_ms']:.0f} ms, {r['scrape_series']:,} series, {r['scrape_bytes']/1e3:.0f} kB | |")
print(f"| server memory | RSS {r['server_rss_mb']:.0f} MB (peak {r['server_peak_rss_mb']:.0f} MB) | |")
print()
print(f"Load average at the end: {load}; {cores} cores, shared (the load generator runs on the same cores).")
EOF
