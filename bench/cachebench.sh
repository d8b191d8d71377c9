#!/usr/bin/env bash
# bench/cachebench.sh [OUTFILE] — a remote site behind a thin link: 8 nodes
# install v2 (and then update v2 -> v3) from an image server reached over a
# 50 Mbit upstream link, three ways, in the network lab of testdata/lab.sh,
# same run. Prints ONE markdown table (stdout and OUTFILE, default
# bench/cacheresults.md); progress on stderr.
#
#   direct  every node runs `sim checkout --from UPSTREAM` itself: the thin
#           link carries the image once per node
#   cache   a site cache (`sim serve --upstream UPSTREAM`, empty store) on the
#           site's LAN; the nodes check out from it: the link should carry
#           each object once (target: upstream bytes ~ one image)
#   mirror  SystemImager's way to serve a site: rsync the image tree to a
#           site image server first (si_getimage's rsync, uncompressed as
#           SystemImager runs it), then every node rsyncs from that server
#
# Lab: srv is the upstream image server; its link is shaped to 50 Mbit (all
# it sends to the site shares that). n1 is the site server (cache or rsync
# mirror), n2..n9 the nodes, all on 1 Gbit. "upstream bytes" is srv's eth0
# tx over the step; time is from the start of the step until the last node
# is done (the mirror's time includes the rsync to the site server). Every
# node's tree is compared with the image (sim diff / rsync's tree to diff -r).
#
# Environment: SIM (default ./bin/sim), SIM_CORPUS (default
# /var/cache/sim/corpus), CACHEBENCH_DIR (scratch, default
# /var/tmp/sim-cachebench, wiped at start and end; CACHEBENCH_KEEP=1 keeps it),
# CACHEBENCH_RATE (upstream rate, default 50mbit), CACHEBENCH_NODES (default 8).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/cacheresults.md}
SIM=${SIM:-./bin/sim}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${CACHEBENCH_DIR:-/var/tmp/sim-cachebench}
RATE=${CACHEBENCH_RATE:-50mbit}
N=${CACHEBENCH_NODES:-8}
LAB=$ROOT/testdata/lab.sh
L=simcachebench
SRV_IP=198.18.0.1
SITE_IP=198.18.1.1
PORT=7480
RSYNC_PORT=8730
UP=http://$SRV_IP:$PORT
SITE=http://$SITE_IP:$PORT

exec {ERRFD}>&2
log() { printf '[cachebench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"
case $W in /?*) ;; *) die "CACHEBENCH_DIR must be an absolute path other than /" ;; esac
W=${W%/}
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 100 ] || die "CACHEBENCH_NODES must be 1..100, not '$N'"
need=()
for t in rsync:rsync ip:iproute2; do
	command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
		die "apt-get install ${need[*]} failed"
fi
if [ ! -x "$SIM" ] && [ "$SIM" = ./bin/sim ]; then make -s build >&2; fi
[ -x "$SIM" ] || die "sim binary not found at '$SIM'"
SIM=$(cd "$(dirname "$SIM")" && pwd)/$(basename "$SIM")
for v in v2 v3; do [ -d "$CORPUS/$v" ] || die "corpus $CORPUS/$v missing (make corpus)"; done

PIDS=()
wipe() {
	[ -e "$W" ] || return 0
	awk -v d="$W" '$5 == d || index($5, d "/") == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo &&
		{ log "refusing to wipe $W: something is mounted under it"; return 1; }
	rm -rf --one-file-system "$W"
}
cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	exec 2>&"$ERRFD"
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	"$LAB" down --name "$L" 2>/dev/null || true
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "${CACHEBENCH_KEEP:-0}" = 1 ]; then log "kept $W (logs in $W/log)"; else wipe || true; fi
	[ "$rc" -eq 0 ] || log "FAILED (exit $rc)$([ "${CACHEBENCH_KEEP:-0}" = 1 ] || echo '; CACHEBENCH_KEEP=1 keeps the logs')"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wipe || die "cannot wipe $W"
mkdir -p "$W/log"

now() { echo "$EPOCHREALTIME"; }
lx() { "$LAB" exec --name "$L" "$@"; }
txbytes() { "$LAB" bytes --name "$L" "$1" | awk '{ print $2 }'; }
wait_port() { # HOST-IP PORT
	local i
	for ((i = 0; i < 200; i++)); do
		lx n2 -- bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on $1:$2 in the lab"
}
start() { # VAR HOST CMD... : start CMD in HOST in the background, its pid in VAR
	local var=$1 host=$2
	shift 2
	"$LAB" exec --name "$L" "$host" -- "$@" &
	printf -v "$var" %s "$!"
	PIDS+=("$!")
}
stop() { # PID
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# ------------------------------------------------------------- the image ---
log "committing v2 and v3 into the upstream store"
"$SIM" --store "$W/up" init >/dev/null
"$SIM" --store "$W/up" commit "$CORPUS/v2" --image img -m v2 >/dev/null
"$SIM" --store "$W/up" tag v2 img >/dev/null
"$SIM" --store "$W/up" commit "$CORPUS/v3" --image img -m v3 >/dev/null
"$SIM" --store "$W/up" tag v3 img >/dev/null

"$LAB" down --name "$L" 2>/dev/null || true
"$LAB" up --name "$L" --nodes $((N + 1)) --server-rate "$RATE" --node-rate 1gbit 2>>"$W/log/lab.log" ||
	die "lab up failed (see $W/log/lab.log)"
log "lab up: upstream $RATE, site server and $N nodes on 1gbit"

declare -A R
UPPID=""
start UPPID srv "$SIM" --store "$W/up" serve --listen "$SRV_IP:$PORT" 2>>"$W/log/up.log"
wait_port "$SRV_IP" "$PORT"

# nodes_checkout STEP SERVER REF: every node checks REF out from SERVER at
# once (into its own store and dir under $W/STEP); sets R[STEP.wire] (sum of
# transfer.wire_bytes of the nodes) and checks every tree.
nodes_checkout() {
	local step=$1 server=$2 ref=$3 i pids=() rc=0
	for ((i = 2; i <= N + 1; i++)); do
		[ -e "$W/nodes/n$i/config" ] || "$SIM" --store "$W/nodes/n$i" init >/dev/null
		"$LAB" exec --name "$L" "n$i" -- "$SIM" --store "$W/nodes/n$i" checkout --from "$server" "$ref" "$W/nodes/n$i.dir" \
			--json --no-sync >"$W/log/$step-n$i.json" 2>>"$W/log/$step-n$i.log" &
		pids+=("$!")
	done
	for i in "${pids[@]}"; do wait "$i" || rc=1; done
	[ "$rc" -eq 0 ] || die "$step: a node's checkout failed (see $W/log/$step-n*.log)"
	read -r "R[$step.wire]" "R[$step.xfer]" < <(cat "$W"/log/"$step"-n*.json | python3 -c 'import sys, json
d = json.JSONDecoder(); s = sys.stdin.read(); i = 0; t = 0; m = 0.0
while True:
    while i < len(s) and s[i].isspace(): i += 1
    if i >= len(s): break
    o, i = d.raw_decode(s, i); x = o.get("transfer", {}); t += x.get("wire_bytes", 0); m = max(m, x.get("seconds", 0.0))
print(t, m)')
}
check_trees() { # STEP REF
	local i d
	for ((i = 2; i <= N + 1; i++)); do
		d=$("$SIM" --store "$W/up" diff "$2" "$W/nodes/n$i.dir/" 2>&1 | head -5)
		[ -z "$d" ] || die "$1: n$i's tree differs from $2: $d"
	done
}

# sampler FILE: srv's tx counter every 100 ms ("time tx"), until killed;
# upstream_done FILE T0 TOTAL TX0: seconds from T0 until srv had sent 99%
# of TOTAL (when the upstream link's part of the step was over)
sampler() {
	while :; do
		echo "$EPOCHREALTIME $(txbytes srv)"
		sleep 0.1
	done >"$1"
}
upstream_done() {
	awk -v t0="$2" -v tot="$3" -v tx0="$4" '$2 - tx0 >= 0.99 * tot { printf "%.1f", $1 - t0; f = 1; exit } END { if (!f) print "-" }' "$1"
}

# step STEP SERVER REF: time and upstream bytes of all nodes checking out REF
step() {
	local s=$1 t0 tx0 sp
	tx0=$(txbytes srv)
	t0=$(now)
	sampler "$W/log/$s.tx" &
	sp=$!
	nodes_checkout "$s" "$2" "$3"
	R[$s.time]=$(echo "$(now) - $t0" | bc -l)
	kill "$sp"
	wait "$sp" 2>/dev/null || true
	R[$s.up]=$(($(txbytes srv) - tx0))
	R[$s.fill]=$(upstream_done "$W/log/$s.tx" "$t0" "${R[$s.up]}" "$tx0")
	check_trees "$s" "$3"
	log "$s: $(printf %.1f "${R[$s.time]}") s (slowest transfer $(printf %.1f "${R[$s.xfer]}") s; upstream busy until ${R[$s.fill]} s), upstream $((R[$s.up] / 1000)) kB, nodes received $((R[$s.wire] / 1000)) kB"
}

command -v bc >/dev/null || die "bc missing"

# ---------------------------------------------------------------- direct ---
rm -rf "$W/nodes"
step direct.v2 "$UP" v2
step direct.v3 "$UP" v3

# ----------------------------------------------------------------- cache ---
rm -rf "$W/nodes"
"$SIM" --store "$W/cache" init >/dev/null
CPID=""
start CPID n1 "$SIM" --store "$W/cache" serve --listen "$SITE_IP:$PORT" --upstream "$UP" 2>>"$W/log/cache.log"
wait_port "$SITE_IP" "$PORT"
step cache.v2 "$SITE" v2
step cache.v3 "$SITE" v3
stop "$CPID"

# ---------------------------------------------------------------- mirror ---
rm -rf "$W/nodes"
mkdir -p "$W/rs/v2" "$W/rs/v3"
"$SIM" --store "$W/up" checkout v2 "$W/rs/v2" --no-sync >/dev/null
"$SIM" --store "$W/up" checkout v3 "$W/rs/v3" --no-sync >/dev/null
cat >"$W/rsyncd-up.conf" <<EOF
use chroot = no
numeric ids = yes
port = $RSYNC_PORT
address = $SRV_IP
pid file = $W/rsyncd-up.pid
[v2]
path = $W/rs/v2
read only = yes
uid = root
gid = root
[v3]
path = $W/rs/v3
read only = yes
uid = root
gid = root
EOF
# The site server keeps one copy of the image and updates it in place
# (si_getimage onto the existing image), as the nodes do theirs.
cat >"$W/rsyncd-site.conf" <<EOF
use chroot = no
numeric ids = yes
port = $RSYNC_PORT
address = $SITE_IP
pid file = $W/rsyncd-site.pid
[img]
path = $W/site/img
read only = yes
uid = root
gid = root
EOF
mkdir -p "$W/site/img"
RUP="" RSITE=""
start RUP srv rsync --daemon --no-detach --config="$W/rsyncd-up.conf"
start RSITE n1 rsync --daemon --no-detach --config="$W/rsyncd-site.conf"
wait_port "$SRV_IP" "$RSYNC_PORT"
wait_port "$SITE_IP" "$RSYNC_PORT"
RS=(-aHAX --numeric-ids --delete)
mirror_step() { # STEP VERSION
	local s=$1 v=$2 t0 tx0 i pids=() rc=0
	tx0=$(txbytes srv)
	t0=$(now)
	lx n1 -- rsync "${RS[@]}" "rsync://$SRV_IP:$RSYNC_PORT/$v/" "$W/site/img/" >"$W/log/$s-site.log" 2>&1 || die "$s: rsync to the site server failed"
	R[$s.mirror]=$(echo "$(now) - $t0" | bc -l)
	for ((i = 2; i <= N + 1; i++)); do
		mkdir -p "$W/nodes/n$i.dir"
		"$LAB" exec --name "$L" "n$i" -- rsync "${RS[@]}" "rsync://$SITE_IP:$RSYNC_PORT/img/" "$W/nodes/n$i.dir/" >"$W/log/$s-n$i.log" 2>&1 &
		pids+=("$!")
	done
	for i in "${pids[@]}"; do wait "$i" || rc=1; done
	[ "$rc" -eq 0 ] || die "$s: a node's rsync failed"
	R[$s.time]=$(echo "$(now) - $t0" | bc -l)
	R[$s.up]=$(($(txbytes srv) - tx0))
	check_trees "$s" "$v"
	log "$s: $(printf %.1f "${R[$s.time]}") s (site copy $(printf %.1f "${R[$s.mirror]}") s), upstream $((R[$s.up] / 1000)) kB"
}
mirror_step mirror.v2 v2
mirror_step mirror.v3 v3
stop "$RUP"
stop "$RSITE"
stop "$UPPID"

# ----------------------------------------------------------------- table ---
one=$((R[direct.v2.wire] / N))
onev3=$((R[direct.v3.wire] / N))
mb() { awk -v b="$1" 'BEGIN { if (b < 1e6) printf "%.0f kB", b / 1e3; else printf "%.1f MB", b / 1e6 }'; }
kb() { awk -v b="$1" 'BEGIN { printf "%.0f kB", b / 1e3 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
	echo "## Site cache: $N nodes behind a $RATE upstream link ($(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
	echo
	echo "One node's v2 install receives $(mb "$one") on the wire; the v2 -> v3 update $(kb "$onev3")."
	echo
	echo "| step | way | time to the last node | slowest node's transfer | upstream link busy for | upstream bytes | upstream / one image |"
	echo "|---|---|---|---|---|---|---|"
	for v in v2 v3; do
		unit=$one
		[ $v = v3 ] && unit=$onev3
		name="install v2"
		[ $v = v3 ] && name="update v2 -> v3"
		echo "| $name | sim, every node direct | $(printf %.1f "${R[direct.$v.time]}") s | $(printf %.1f "${R[direct.$v.xfer]}") s | ${R[direct.$v.fill]} s | $(mb "${R[direct.$v.up]}") | $(ratio "${R[direct.$v.up]}" "$unit") |"
		echo "| $name | sim, site cache (\`serve --upstream\`) | $(printf %.1f "${R[cache.$v.time]}") s | $(printf %.1f "${R[cache.$v.xfer]}") s | ${R[cache.$v.fill]} s | $(mb "${R[cache.$v.up]}") | $(ratio "${R[cache.$v.up]}" "$unit") |"
		echo "| $name | rsync to a site server, then the nodes (SystemImager) | $(printf %.1f "${R[mirror.$v.time]}") s (site copy $(printf %.1f "${R[mirror.$v.mirror]}") s) | - | $(printf %.1f "${R[mirror.$v.mirror]}") s | $(mb "${R[mirror.$v.up]}") | $(ratio "${R[mirror.$v.up]}" "$unit") |"
	done
	echo
	echo "Target: through the cache the upstream link carries about one image (ratio ~1). Every node's tree was compared with the image."
	echo "Lab: testdata/lab.sh; srv (upstream) shaped to $RATE, the site server and nodes on 1gbit; upstream bytes are srv's eth0 tx over the step."
} | tee "$OUT"
