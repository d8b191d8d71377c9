#!/usr/bin/env bash
# bench/abcompare.sh — compare two sim binaries on the same workloads, for a
# change that must not slow anything down (a reshaping): commit, re-commit,
# checkout, in-place rollback, a node install and update over HTTP from
# `sim serve` on loopback, fsck --read-data and gc, on the real corpus.
#
#   bench/abcompare.sh OLD_SIM NEW_SIM [RUNS]      (default 5 runs)
#
# The two binaries run interleaved (old, new, new, old, ...) so a machine
# whose load changes during the run bills both alike, and each cell is the
# median of RUNS. CPU seconds (user + system, GNU time) are reported beside
# wall seconds: on a shared machine the CPU a command needs moves much less
# than its wall time. Prints one markdown table on stdout; progress on
# stderr. Needs the corpus (SIM_CORPUS, default /var/cache/sim/corpus).
set -euo pipefail

OLD=$(readlink -f "${1:?usage: abcompare.sh OLD_SIM NEW_SIM [RUNS]}")
NEW=$(readlink -f "${2:?usage: abcompare.sh OLD_SIM NEW_SIM [RUNS]}")
RUNS=${3:-5}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
B=$(mktemp -d /var/tmp/sim-ab.XXXXXX)
SRV_PID=
cleanup() {
	[ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
	rm -rf --one-file-system "$B"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for v in v1 v2 v3; do [ -d "$CORPUS/$v" ] || { echo "no corpus at $CORPUS (make corpus)" >&2; exit 1; }; done
log() { printf '[ab %s] %s\n' "$(date +%T)" "$*" >&2; }

# measure NAME BIN CMD... — append "wall cpu" of one run to $B/res/NAME.BIN
mkdir -p "$B/res"
measure() {
	local name=$1 which=$2
	shift 2
	sync
	/usr/bin/time -f '%e %U %S' -o "$B/t" "$@" >"$B/out" 2>"$B/err" || {
		log "$name ($which) failed: $*"
		tail -5 "$B/err" >&2
		exit 1
	}
	awk '{ printf "%s %.3f\n", $1, $2 + $3 }' "$B/t" >>"$B/res/$name.$which"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# one BIN WHICH — one run of every workload with binary BIN.
one() {
	local S=$1 w=$2
	local d=$B/$w
	rm -rf "$d"
	mkdir -p "$d"
	"$S" --store "$d/store" init >/dev/null
	measure commit_v1 "$w" "$S" --store "$d/store" commit "$CORPUS/v1" --image deb
	"$S" --store "$d/store" commit "$CORPUS/v2" --image deb >/dev/null 2>&1
	"$S" --store "$d/store" tag v2 deb >/dev/null
	"$S" --store "$d/store" commit "$CORPUS/v3" --image deb >/dev/null 2>&1
	measure recommit_v3 "$w" "$S" --store "$d/store" commit "$CORPUS/v3" --image deb
	measure checkout_v2 "$w" "$S" --store "$d/store" checkout v2 "$d/co"
	"$S" --store "$d/store" checkout deb "$d/co" >/dev/null 2>&1
	measure rollback_v3_v2 "$w" "$S" --store "$d/store" checkout v2 "$d/co"
	measure fsck_read_data "$w" "$S" --store "$d/store" fsck --read-data
	local p
	p=$(port)
	"$S" --store "$d/store" serve --listen "127.0.0.1:$p" --no-bittorrent 2>"$d/serve.log" &
	SRV_PID=$!
	for _ in $(seq 100); do grep -q serving "$d/serve.log" 2>/dev/null && break; sleep 0.1; done
	measure install_v2_http "$w" "$S" --store "$d/node" checkout --from "http://127.0.0.1:$p" v2 "$d/root"
	measure update_v2_v3_http "$w" "$S" --store "$d/node" checkout --from "http://127.0.0.1:$p" deb "$d/root"
	kill "$SRV_PID"
	wait "$SRV_PID" 2>/dev/null || true
	SRV_PID=
	"$S" --store "$d/store" image rm deb >/dev/null
	measure gc "$w" "$S" --store "$d/store" gc
}

for i in $(seq "$RUNS"); do
	log "round $i of $RUNS"
	if [ $((i % 2)) = 1 ]; then one "$OLD" old; one "$NEW" new; else one "$NEW" new; one "$OLD" old; fi
done

med() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "| workload (median of $RUNS) | old wall s | new wall s | new/old | old CPU s | new CPU s | new/old |"
echo "|---|---|---|---|---|---|---|"
for n in commit_v1 recommit_v3 checkout_v2 rollback_v3_v2 fsck_read_data install_v2_http update_v2_v3_http gc; do
	ow=$(cut -d' ' -f1 "$B/res/$n.old" | med) nw=$(cut -d' ' -f1 "$B/res/$n.new" | med)
	oc=$(cut -d' ' -f2 "$B/res/$n.old" | med) nc=$(cut -d' ' -f2 "$B/res/$n.new" | med)
	awk -v n="$n" -v ow="$ow" -v nw="$nw" -v oc="$oc" -v nc="$nc" 'BEGIN {
		printf "| %s | %.3f | %.3f | %.2f | %.3f | %.3f | %.2f |\n", n, ow, nw, (ow > 0 ? nw / ow : 0), oc, nc, (oc > 0 ? nc / oc : 0) }'
done
