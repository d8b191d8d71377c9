#!/usr/bin/env bash
# bench/installcpubench.sh [OUTFILE] — issue #16's "a node install at the
# cost of untar": the CPU (user+sys, /usr/bin/time, children included) of
# `sim checkout v2 DIR` from a local store into an empty directory, beside
# `zstd -d | tar -x` of the same tree (a zstd -3 tarball, xattrs included,
# as root so both set owners and modes), in the same run, interleaved.
# Prints ONE markdown table (stdout and OUTFILE, default
# bench/installcpuresults.md); progress on stderr.
#
#   target: sim's CPU per install of v2 <= 1.2x untar's (medians)
#
# Both write into an empty directory without fsync (sim: --no-sync); a
# `sync` before each run keeps the previous run's writeback off its bill,
# and the inputs (the store's packs, the tarball) are read once before each,
# untimed, so both start from a warm page cache. Every sim checkout is
# compared with the corpus (names, kinds, modes, owners, mtimes, sizes,
# link targets): a run that is not exact fails the bench.
#
# A third row is the whole node install over the network: `sim checkout
# v2 DIR --from URL` into an empty node store and an empty directory, from
# a `sim serve` of the same store on loopback (INSTALLCPU_PORT, default
# 17481; its own CPU is not counted): what the node's process spends to
# receive, verify and store the objects, then check them out.
#
# INSTALLCPU_RUNS (default 5) rounds; INSTALLCPU_DIR scratch (default
# /var/tmp/sim-installcpubench, wiped at start and end; INSTALLCPU_KEEP=1
# keeps it); INSTALLCPU_TMPFS=1 mounts a tmpfs there first (on a loaded
# machine ext4's inode creation costs several CPU-seconds of system time
# per run, for both tools alike, and drowns the difference being
# measured). SIM: the sim binary (default ./bin/sim); SIM_CORPUS: the corpus.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/installcpuresults.md}
SIM=${SIM:-./bin/sim}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${INSTALLCPU_DIR:-/var/tmp/sim-installcpubench}
RUNS=${INSTALLCPU_RUNS:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "INSTALLCPU_RUNS must be a positive integer" >&2; exit 1; }

log() { printf '[installcpubench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the tree's owners)"
case $W in /?*) ;; *) die "INSTALLCPU_DIR must be an absolute path other than /" ;; esac
W=${W%/}
for t in zstd tar /usr/bin/time; do command -v "$t" >/dev/null || die "$t is missing (bench/deps.sh installs it)"; done
if [ ! -x "$SIM" ] && [ "$SIM" = ./bin/sim ]; then make -s build >&2; fi
[ -x "$SIM" ] || die "sim binary not found at '$SIM'"
SIM=$(cd "$(dirname "$SIM")" && pwd)/$(basename "$SIM")

PORT=${INSTALLCPU_PORT:-17481}
[[ $PORT =~ ^[1-9][0-9]*$ ]] || die "INSTALLCPU_PORT must be a port number"
SERVE_PID=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	# wait returns the server's exit status (killed: not 0): under set -e
	# that ended the cleanup before the scratch was removed.
	if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null || true; fi
	if [ "${INSTALLCPU_KEEP:-0}" = 1 ]; then log "kept $W"; else
		# The tmpfs first: rm --one-file-system skips a mount point and
		# fails, and under set -e that ended the cleanup with the tmpfs
		# (and its 4 GiB bound of the machine's memory) left mounted.
		[ "${INSTALLCPU_TMPFS:-0}" != 1 ] || umount "$W" 2>/dev/null || true
		rm -rf --one-file-system "$W"
	fi
	[ "$rc" -eq 0 ] || log "FAILED (exit $rc)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/testdata/mkcorpus.sh" "$CORPUS" >/dev/null || die "mkcorpus.sh failed"
rm -rf --one-file-system "$W"
mkdir -p "$W"
FS=$(stat -f -c %T "$W")
if [ "${INSTALLCPU_TMPFS:-0}" = 1 ]; then mount -t tmpfs -o size=4g tmpfs "$W" && FS=tmpfs; fi
log "scratch $W ($FS), sim $SIM, corpus $CORPUS/v2, $RUNS rounds"
"$SIM" --store "$W/store" init >/dev/null
"$SIM" --store "$W/store" commit "$CORPUS/v2" --image deb -m v2 >"$W/commit.log" 2>&1 || die "commit v2 failed (see $W/commit.log)"
# The server of the network install: a copy of the store (the local
# checkouts open the store itself, which a running sim serve would own).
cp -a "$W/store" "$W/srv"
"$SIM" --store "$W/srv" serve --listen "127.0.0.1:$PORT" --bt-listen "127.0.0.1:$((PORT + 1))" >"$W/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "sim serve did not start (see $W/serve.log)"
# The tarball the SystemImager way would ship: zstd at the store's level (3).
tar --xattrs --xattrs-include='*' --numeric-owner -C "$CORPUS/v2" -cf - . | zstd -3 -q -T1 -o "$W/v2.tar.zst"
SIZE=$(du -sb "$CORPUS/v2" | cut -f1)
ENTRIES=$(find "$CORPUS/v2" -mindepth 1 | wc -l)

# The corpus as a listing to compare checkouts with (directory sizes left
# out: they depend on the filesystem's history, not the tree).
listing() { (cd "$1" && find . -printf '%p %y %m %U %G %T@ %l\n' && find . -type f -printf '%p %s\n') | LC_ALL=C sort; }
listing "$CORPUS/v2" >"$W/want.txt"

warm() { find "$@" -type f -exec cat {} + >/dev/null; }
# One timed command: prints "user+sys wall".
timed() {
	/usr/bin/time -f "%U %S %e" -o "$W/time" "$@" >>"$W/run.log" 2>&1 || die "$* failed (see $W/run.log)"
	awk '{ printf "%.2f %.2f\n", $1 + $2, $3 }' "$W/time"
}
SIMC=() TARC=() SIMW=() TARW=() NETC=() NETW=()
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 1; i <= RUNS; i++)); do
	# Alternate who goes first, so none always runs after the others.
	for who in $( ((i % 2)) && echo "sim tar net" || echo "net tar sim"); do
		rm -rf --one-file-system "$W/dst" "$W/node"
		sync
		if [ "$who" = net ]; then
			warm "$W/srv/packs"
			read -r c w < <(timed "$SIM" --store "$W/node" checkout deb "$W/dst" --from "http://127.0.0.1:$PORT" --no-sync)
			listing "$W/dst" >"$W/got.txt"
			cmp -s "$W/want.txt" "$W/got.txt" || die "round $i: the network install differs from the corpus (diff $W/want.txt $W/got.txt)"
			NETC+=("$c") NETW+=("$w")
		elif [ "$who" = sim ]; then
			warm "$W/store/packs"
			read -r c w < <(timed "$SIM" --store "$W/store" checkout deb "$W/dst" --no-sync)
			listing "$W/dst" >"$W/got.txt"
			cmp -s "$W/want.txt" "$W/got.txt" || die "round $i: the checkout differs from the corpus (diff $W/want.txt $W/got.txt)"
			SIMC+=("$c") SIMW+=("$w")
		else
			warm "$W/v2.tar.zst"
			mkdir "$W/dst"
			read -r c w < <(timed sh -c "zstd -d -q -c '$W/v2.tar.zst' | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C '$W/dst'")
			TARC+=("$c") TARW+=("$w")
		fi
		log "round $i: $who ${c} CPU-s, ${w} s"
	done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

med() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'; }
sc=$(med "${SIMC[@]}") tc=$(med "${TARC[@]}") nc=$(med "${NETC[@]}")
r=$(ratio "$sc" "$tc") rn=$(ratio "$nc" "$tc")
okr() { awk -v r="$1" 'BEGIN { print (r <= 1.2) ? "✅" : "❌" }'; }
{
	echo "| install of v2 ($(awk -v b="$SIZE" 'BEGIN { printf "%.0f MB", b / 1e6 }'), $ENTRIES entries, $FS), $RUNS rounds | CPU (user+sys), median | range | wall, median |"
	echo "|---|---|---|---|"
	echo "| sim checkout from a local store | ${sc} s | $(range "${SIMC[@]}") s | $(med "${SIMW[@]}") s |"
	echo "| sim checkout --from (HTTP, loopback): fetch into an empty node store, the checkout beside it; the node's CPU | ${nc} s | $(range "${NETC[@]}") s | $(med "${NETW[@]}") s |"
	echo "| zstd -d \| tar -x | ${tc} s | $(range "${TARC[@]}") s | $(med "${TARW[@]}") s |"
	echo "| sim checkout / untar | ${r} $(okr "$r") ≤ 1.2 | | |"
	echo "| sim network install / untar | ${rn} $(okr "$rn") ≤ 1.2 | | |"
	echo
	echo "Load average: $LOAD0 at the start, $LOAD1 at the end; $(nproc) cores."
} | tee "$OUT"
