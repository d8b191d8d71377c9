#!/usr/bin/env bash
# bench/fleetbench.sh [OUTFILE] — the 50-node lab (issue 16): every sim
# transport at every fleet size, SystemImager's three ways beside them, and
# whether `--transport auto` is within 10% of the best fixed choice.
# Writes OUTFILE (default bench/fleetresults.md); progress on stderr.
#
# Lab (testdata/lab.sh): a star of network namespaces, addresses in
# 198.18.0.0/15, the server's link shaped to FLEETBENCH_SERVER_RATE
# (default 1gbit) and every node's to FLEETBENCH_NODE_RATE (100mbit), both
# directions (tc tbf). Torn down on exit and on SIGINT/SIGTERM.
#
# sim, for each N in FLEETBENCH_NS ("1 4 16 50") and each transport in
# FLEETBENCH_TRANSPORTS ("http bittorrent multicast auto"; bt and mcast are
# accepted), each operation in FLEETBENCH_OPS ("install v2v3 v1v2"):
#   install  v2 checked out onto N empty node stores and directories
#   v2v3     the N nodes at v2 (from the install just done) update to v3
#   v1v2     N nodes at v1 (a store holding v1 only, as after an install of
#            v1, copied from one node's; the tree checked out locally) update
#            to v2
# all N nodes at once. Per cell: time to the last node (checkout included),
# the transfer alone (the slowest node's own "transfer" seconds in its
# --json: objects received and verified, before the checkout), server bytes
# sent (its eth0), CPU (user+sys) of all node processes and per node, and
# the model's prediction (F: the bytes one node lacks, sim fetch-plan; Us,
# Uc: the shaped rates as TCP goodput, 95.6%):
#   http        max(N·F/Us, F/Uc)                the rsync role
#   multicast   F/min(Us, Uc, mcast rate)        plus repairs (see sent/F)
#   bittorrent  max(F/Us, F/Uc, N·F/(Us+N·Uc))   Qiu–Srikant
# sim serve runs with --mcast-min-receivers N, --auto-uplink the server's
# rate, --auto-node-cores $(nproc) --auto-shared-host (the nodes and the
# server share this machine's cores);
# auto nodes pass --auto-nodes N (the size of the install, as a rollout
# wave or a rack's install knows it). Bittorrent nodes leave the
# swarm when done (--seed-time 0). Every node's tree is compared with its
# commit (sim diff ID DIR prints nothing) after every cell; a difference
# stops the bench.
#
# SystemImager (FLEETBENCH_SI=1, default; at N in FLEETBENCH_SI_NS, "16 50"):
#   rsync     an rsync daemon on the server, every node rsync -aHAX
#             --numeric-ids --delete (si_updateclient): install v2 into an
#             empty directory, v1->v2 (nodes start from cp -a of the
#             corpus' v1), v2->v3
#   udpcast   Flamethrower's way: udp-sender of a tar | zstd -3 stream,
#             every node udp-receiver | zstd -d | tar -x (install v2)
#   aria2c    tarball + mktorrent + opentracker + aria2c, then untar
#             (install v2)
# An update with udpcast or aria2c is the whole tarball again, as an
# install: its row says so and is not measured twice. Their trees are
# compared with the commit too (sim diff).
#
# Results accumulate in FLEETBENCH_RAW (default bench/fleetraw.tsv): one
# line per cell, a rerun of a cell replaces its line, so parts can be rerun
# (FLEETBENCH_NS=50 FLEETBENCH_TRANSPORTS=auto FLEETBENCH_OPS=install, or
# FLEETBENCH_SI=0) and OUTFILE is written from every cell measured so far.
# FLEETBENCH_REPORT=1 only rewrites OUTFILE from the raw file.
#
# Environment: SIM (./bin/sim), SIM_CORPUS (/var/cache/sim/corpus),
# FLEETBENCH_DIR (/var/tmp/sim-fleetbench, wiped), FLEETBENCH_TMPFS (17g:
# the size of the tmpfs mounted there; 50 nodes at v2 with their stores
# take ~13 GB, at the v1->v2 update ~15 GB; 0: on disk), FLEETBENCH_LAB (simfleet), FLEETBENCH_MCAST_RATE
# (95Mbit: multicast and udpcast send at most this, under the node links).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/fleetresults.md}
RAW=${FLEETBENCH_RAW:-$ROOT/bench/fleetraw.tsv}
SIM=$(readlink -f "${SIM:-./bin/sim}")
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${FLEETBENCH_DIR:-/var/tmp/sim-fleetbench}
NS=${FLEETBENCH_NS:-1 4 16 50}
TRS=${FLEETBENCH_TRANSPORTS:-http bittorrent multicast auto}
OPS=${FLEETBENCH_OPS:-install v2v3 v1v2}
SI=${FLEETBENCH_SI:-1}
SI_NS=${FLEETBENCH_SI_NS:-16 50}
SRATE=${FLEETBENCH_SERVER_RATE:-1gbit}
NRATE=${FLEETBENCH_NODE_RATE:-100mbit}
MRATE=${FLEETBENCH_MCAST_RATE:-95Mbit}
L=${FLEETBENCH_LAB:-simfleet}
TMPFS=${FLEETBENCH_TMPFS:-17g}
LAB=$ROOT/testdata/lab.sh
SRV=198.18.0.1
URL=http://$SRV:7480
RSYNC_PORT=8730

exec {ERRFD}>&2
log() { printf '[fleetbench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

# rate_bps RATE: tc-style rate (100mbit, 1gbit) -> bytes/s of TCP goodput
# (tbf counts L2 bytes: ~95.6% of the rate is payload, testdata/lab.sh).
rate_bps() {
	local r=${1,,}
	[[ $r =~ ^([0-9]+(\.[0-9]+)?)(kbit|mbit|gbit)$ ]] || return 1
	awk -v n="${BASH_REMATCH[1]}" -v u="${BASH_REMATCH[3]}" 'BEGIN {
		m = (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : 1e9; printf "%.0f\n", n * m / 8 * 0.956 }'
}
US=$(rate_bps "$SRATE") || die "FLEETBENCH_SERVER_RATE '$SRATE': want e.g. 100mbit, 1gbit"
UC=$(rate_bps "$NRATE") || die "FLEETBENCH_NODE_RATE '$NRATE': want e.g. 100mbit"
UM=$(rate_bps "${MRATE,,}") || die "FLEETBENCH_MCAST_RATE '$MRATE': want e.g. 95Mbit"

norm_tr() {
	case $1 in
	http) echo http ;; bt | bittorrent) echo bittorrent ;; mcast | multicast) echo multicast ;; auto) echo auto ;;
	*) die "FLEETBENCH_TRANSPORTS: unknown transport '$1' (http, bittorrent, multicast, auto)" ;;
	esac
}
TRL=()
for t in $TRS; do TRL+=("$(norm_tr "$t")"); done
for o in $OPS; do case $o in install | v2v3 | v1v2) ;; *) die "FLEETBENCH_OPS: unknown operation '$o' (install, v2v3, v1v2)" ;; esac; done
for n in $NS $SI_NS; do [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 200 ] || die "fleet size '$n': want 1..200"; done
case $W in /?*) ;; *) die "FLEETBENCH_DIR must be an absolute path" ;; esac
[[ $W != / ]] || die "FLEETBENCH_DIR must not be /"

# ------------------------------------------------------------- report ---
# raw line: key(way|N|op) wall transfer srvtx cpu_total cpu_max model F chosen exact load date note
report() {
	[ -s "$RAW" ] || die "no results in $RAW yet"
	python3 - "$RAW" "$OUT" <<-'PY'
		import sys, collections
		raw, out = sys.argv[1], sys.argv[2]
		rows = {}
		meta = []
		for line in open(raw):
		    line = line.rstrip("\n")
		    if not line or line.startswith("#"):
		        if line.startswith("#meta\t"): meta.append(line.split("\t", 1)[1])
		        continue
		    f = line.split("\t")
		    rows[f[0]] = f
		def num(x):
		    try: return float(x)
		    except ValueError: return None
		def mb(b):
		    b = num(b)
		    if b is None: return "–"
		    return "%.1f MB" % (b / 1e6) if b >= 1e6 else "%.0f kB" % (b / 1e3)
		def s(x):
		    v = num(x)
		    return "–" if v is None else "%.1f s" % v if v >= 10 else "%.2f s" % v
		ops = ["install", "v2v3", "v1v2"]
		opname = {"install": "install v2", "v2v3": "update v2→v3", "v1v2": "update v1→v2"}
		ways = ["http", "bittorrent", "multicast", "auto", "si-rsync", "si-udpcast", "si-aria2c"]
		wayname = {"http": "sim http", "bittorrent": "sim bittorrent", "multicast": "sim multicast", "auto": "sim auto",
		           "si-rsync": "SI rsync daemon", "si-udpcast": "SI udpcast (Flamethrower)", "si-aria2c": "SI tarball+aria2c"}
		keys = sorted(rows, key=lambda k: (ops.index(k.split("|")[2]), int(k.split("|")[1]), ways.index(k.split("|")[0])))
		o = []
		o.append("### 50 nodes in the lab (bench/fleetbench.sh)")
		o.append("")
		for m in meta: o.append("- " + m)
		o.append("")
		o.append("Time to the last node includes the checkout (or untar); transfer alone is the slowest node's own transfer (received and verified, before the checkout; udpcast: the sender's run). Model: see the script's header. CPU: user+sys of the node processes, all nodes and per node (mean / max). Exact: every node's tree compared with its commit (sim diff).")
		o.append("")
		for op in ops:
		    ks = [k for k in keys if k.split("|")[2] == op]
		    if not ks: continue
		    o.append("#### " + opname[op])
		    o.append("")
		    o.append("| way | N | time to the last node | transfer alone | model | server bytes sent | sent / (N·F) | node CPU, all | per node (mean / max) | exact | auto chose | load at start |")
		    o.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
		    for k in ks:
		        f = rows[k]
		        way, n, _ = k.split("|")
		        wall, xfer, tx, cpu, cmax, model, F, chosen, exact, load, date, note = f[1:13]
		        ratio = "–"
		        if num(tx) is not None and num(F) and way not in ("multicast", "si-udpcast"):
		            ratio = "%.2f" % (num(tx) / (num(F) * int(n)))
		        elif num(tx) is not None and num(F):
		            ratio = "%.2f (one copy: %.2f)" % (num(tx) / (num(F) * int(n)), num(tx) / num(F))
		        per = "–" if num(cpu) is None else "%.2f / %.2f s" % (num(cpu) / int(n), num(cmax))
		        o.append("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (wayname[way], (" (" + note + ")") if note else "", n, s(wall), s(xfer), s(model), mb(tx), ratio, s(cpu), per, exact, chosen or "–", load))
		    o.append("")
		# auto against the best fixed choice
		o.append("#### `--transport auto` against the best fixed transport")
		o.append("")
		o.append("| operation | N | best fixed | auto | auto / best | ≤ 1.10 | auto chose, and why (node n1's output) |")
		o.append("|---|---|---|---|---|---|---|")
		for op in ops:
		    for n in sorted({int(k.split("|")[1]) for k in rows}):
		        a = rows.get("auto|%d|%s" % (n, op))
		        fixed = [(num(rows[k][1]), k.split("|")[0]) for k in rows if k.split("|")[1] == str(n) and k.split("|")[2] == op and k.split("|")[0] in ("http", "bittorrent", "multicast") and num(rows[k][1]) is not None]
		        if not a or not fixed: continue
		        bt, bw = min(fixed)
		        at = num(a[1]); r = at / bt
		        o.append("| %s | %d | %s %s | %s | %.2f | %s | %s: %s |" % (opname[op], n, bw, s(bt), s(a[1]), r, "✅" if r <= 1.10 else "❌", a[8], a[13] if len(a) > 13 else ""))
		o.append("")
		# targets
		def get(w, n, op, i=1):
		    r = rows.get("%s|%d|%s" % (w, n, op))
		    return num(r[i]) if r else None
		o.append("#### Targets")
		o.append("")
		for w in ("bittorrent", "multicast"):
		    t1, t50 = get(w, 1, "install"), get(w, 50, "install")
		    x1, x50 = get(w, 1, "install", 2), get(w, 50, "install", 2)
		    if t1 and t50:
		        o.append("- 50 nodes, v2 install, %s: %.1f s vs %.1f s for one node = %.2f× (target ≤ 2×: %s); transfer alone %s vs %s = %s" % (
		            w, t50, t1, t50 / t1, "met" if t50 / t1 <= 2 else "not met", s(x50), s(x1), ("%.2f×" % (x50 / x1)) if x1 and x50 else "–"))
		h50, hm = get("http", 50, "install"), get("http", 50, "install", 6)
		if h50: o.append("- 50 nodes, v2 install, http (baseline, line rate Us/N): %.1f s, model %.1f s (%.2f× the model)" % (h50, hm, h50 / hm))
		for w in ("http", "bittorrent", "multicast", "auto"):
		    d, b = get(w, 50, "v2v3"), get(w, 50, "v2v3", 3)
		    if d is not None:
		        o.append("- delta v2→v3 to 50 nodes, %s: %.2f s (target < 2 s: %s), server bytes %s (target < 200 KB: %s)" % (w, d, "met" if d < 2 else "not met", mb(b), "met" if b < 200e3 else "not met"))
		o.append("")
		open(out, "w").write("\n".join(o) + "\n")
		print("\n".join(o))
	PY
}
if [ "${FLEETBENCH_REPORT:-0}" = 1 ]; then report; exit 0; fi

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"
for v in v1 v2 v3; do [ -f "$CORPUS/$v.stamp" ] || die "no corpus $CORPUS/$v (make corpus)"; done
[ -x "$SIM" ] || die "no sim binary at $SIM (make build)"
need=(python3 /usr/bin/time zstd tar)
[ "$SI" = 1 ] && need+=(rsync udp-sender udp-receiver mktorrent opentracker aria2c)
for t in "${need[@]}"; do command -v "$t" >/dev/null || die "$t missing (bash bench/deps.sh)"; done
MAXN=0
for n in $NS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
if [ "$SI" = 1 ]; then for n in $SI_NS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done; fi

# Every process of the bench runs inside the lab's namespaces (lab.sh exec):
# lab.sh down stops them all (TERM, then KILL after 2 s). PIDS are the
# ones started in the background, waited for or stopped by pid.
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	bash "$LAB" down --name "$L" >/dev/null 2>&1
	umount "$W" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
trap 'log "interrupted: cells finished so far are in $RAW"; exit 130' INT TERM
umount "$W" 2>/dev/null || true
rm -rf "$W"
mkdir -p "$W"
# Stores and trees on a tmpfs: this VM's ext4 creates inodes very slowly
# after a big deletion (each cell wipes N trees), which times the disk, not
# the transports (a node install of v2 took 11 CPU-s instead of 4).
if [ "$TMPFS" != 0 ]; then mount -t tmpfs -o "size=$TMPFS" tmpfs "$W" || die "mount tmpfs on $W failed"; fi
mkdir -p "$W/log" "$W/n" "$W/tpl"
bash "$LAB" down --name "$L" >/dev/null 2>&1 || true
log "lab: $MAXN nodes, server $SRATE, nodes $NRATE"
bash "$LAB" up --name "$L" --nodes "$MAXN" --server-rate "$SRATE" --node-rate "$NRATE" 2>>"$W/log/lab.log" || die "lab up failed (see $W/log/lab.log)"
X() { bash "$LAB" exec --name "$L" "$@"; }
txsrv() { bash "$LAB" bytes --name "$L" srv | awk '{print $2}'; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
load() { cut -d' ' -f1 /proc/loadavg; }
wait_port() { # PORT: until something listens on the server
	local i
	for ((i = 0; i < 200; i++)); do
		X n1 -- bash -c "exec 3<>/dev/tcp/$SRV/$1" 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on $SRV:$1 in the lab"
}

# record KEY FIELDS...: replace KEY's line in RAW.
record() {
	local key=$1
	shift
	touch "$RAW"
	grep -v -F -- "$key"$'\t' "$RAW" >"$RAW.tmp" || true
	(IFS=$'\t'; echo "$key"$'\t'"$*") >>"$RAW.tmp"
	mv "$RAW.tmp" "$RAW"
}
# The run's description, kept once per run in RAW (#meta lines, newest last).
meta() {
	touch "$RAW"
	grep -v -F -- "#meta"$'\t'"$1" "$RAW" >"$RAW.tmp" || true
	printf '#meta\t%s\n' "$1$2" >>"$RAW.tmp"
	mv "$RAW.tmp" "$RAW"
}

log "server store: v1, v2, v3"
S="$SIM --store $W/srv"
$S init >/dev/null
for v in v1 v2 v3; do $S commit "$CORPUS/$v" --image deb -m $v >/dev/null 2>>"$W/log/store.log"; $S tag $v deb; done
declare -A ID
for v in v1 v2 v3; do ID[$v]=$($S show $v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'); done
START_LOAD=$(uptime | sed 's/.*load average: //')
START_DATE=$(date -u '+%F %H:%M UTC')
meta "lab: " "server uplink $SRATE, node links $NRATE (tc tbf both ways), multicast and udpcast at $MRATE, MTU 1500, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"

SERVE_PID=""
# --auto-node-cores, --auto-shared-host: the lab's nodes are network
# namespaces on this one machine with the server, so all share its $(nproc)
# cores; at 16 and 50 nodes their CPU, not the network, bounds the install
# (transport auto's CPU floor, (N·c·F + s·sent)/C).
start_serve() { # N
	X srv -- "$SIM" --store "$W/srv" serve --listen "$SRV:7480" --bt-listen "$SRV:6881" \
		--mcast-rate "$MRATE" --mcast-min-receivers "$1" --mcast-wait 30s --auto-uplink "$SRATE" --auto-node-rate "$NRATE" \
		--auto-node-cores "$(nproc)" --auto-shared-host 2>>"$W/log/serve.log" &
	SERVE_PID=$!
	PIDS+=("$SERVE_PID")
	wait_port 7480
}
stop_serve() {
	[ -n "$SERVE_PID" ] || return 0
	kill -TERM "$SERVE_PID" 2>/dev/null || true
	wait "$SERVE_PID" 2>/dev/null || true
	SERVE_PID=""
}

nodes() { seq -f 'n%g' 1 "$1"; }
# par CMD...: run CMD NODE for nodes 1..N, 4 at a time (setup, checks).
par() {
	local n=$1
	shift
	nodes "$n" | xargs -P 4 -I{} "$@" || return 1
}
export SIM W
# check_tree N ID DIRFMT STORE: every node's DIR is exactly commit ID.
check_trees() { # N ID KIND(sim|si)
	local n=$1 id=$2 kind=$3
	nodes "$n" | xargs -P 4 -I{} bash -c '
		h={}; if [ "$0" = sim ]; then st=$W/n/$h/store; else st=$W/srv; fi
		out=$("$SIM" --store "$st" diff "$1" "$W/n/$h/root/" 2>&1) || { echo "$h: sim diff failed: $out" | head -3; exit 1; }
		[ -z "$out" ] || { echo "$h differs from $1:"; echo "$out" | head -5; exit 1; }' "$kind" "$id" >&2
}

wipe_nodes() { rm -rf "$W"/n/*; }

# template_v1: one node's store after installing v1 over HTTP, copied to
# every node with the tree checked out from it locally (not timed): the
# nodes' state before the v1 -> v2 update.
setup_v1() { # N
	local n=$1
	if [ ! -d "$W/tpl/v1/store" ]; then
		X n1 -- "$SIM" --store "$W/tpl/v1/store" checkout --from "$URL" --no-sync "${ID[v1]}" "$W/tpl/v1/root" >>"$W/log/setup.log" 2>&1 ||
			die "template v1 failed (see $W/log/setup.log)"
		rm -rf "$W/tpl/v1/root"
	fi
	wipe_nodes
	par "$n" bash -c 'mkdir -p "$W/n/$0" && cp -a "$W/tpl/v1/store" "$W/n/$0/store" &&
		"$SIM" --store "$W/n/$0/store" checkout --no-sync "$1" "$W/n/$0/root" >/dev/null 2>&1' {} "${ID[v1]}" ||
		die "setting up v1 nodes failed"
}

# fplan N ID: F, the bytes node n1 lacks for ID (sim fetch-plan).
fplan() {
	X n1 -- "$SIM" --store "$W/n/n1/store" fetch-plan "$URL" "$1" "$W/n/n1/root" --json 2>>"$W/log/plan.log" |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["wire_bytes_estimate"])' 2>>"$W/log/plan.log" || echo 0
}

model() { # WAY N F (no F: no prediction)
	[ -n "$3" ] || { echo "–"; return 0; }
	awk -v w="$1" -v n="$2" -v f="$3" -v us="$US" -v uc="$UC" -v um="$UM" 'function mx(a, b) { return a > b ? a : b }
	function mn(a, b) { return a < b ? a : b }
	BEGIN {
		if (w == "http" || w == "si-rsync") t = mx(n * f / us, f / uc)
		else if (w == "multicast" || w == "si-udpcast") t = f / mn(mn(us, uc), um)
		else t = mx(mx(f / us, f / uc), n * f / (us + n * uc))
		printf "%.2f", t }'
}

# run_sim N TR OP: all N nodes check the target out at once; records the cell.
run_sim() {
	local n=$1 tr=$2 op=$3 to
	case $op in install) to=v2 ;; v2v3) to=v3 ;; v1v2) to=v2 ;; esac
	local id=${ID[$to]} F
	F=$(fplan "$id")
	rm -f "$W"/log/cell-*
	sync
	local extra=() tx0 t0 pids=() h l0
	[ "$tr" = auto ] && extra=(--auto-nodes "$n")
	l0=$(load)
	tx0=$(txsrv)
	t0=$(now)
	for h in $(nodes "$n"); do
		X "$h" -- /usr/bin/env time -f "%U %S" -o "$W/log/cell-$h.cpu" "$SIM" --store "$W/n/$h/store" checkout --from "$URL" \
			--transport "$tr" "${extra[@]}" --no-sync --seed-time 0 --mcast-timeout 30s --json "$id" "$W/n/$h/root" \
			>"$W/log/cell-$h.json" 2>"$W/log/cell-$h.err" &
		pids+=($!)
	done
	local fail=0 p
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	local t1 tx1
	t1=$(now)
	tx1=$(txsrv)
	if [ $fail = 1 ]; then
		mkdir -p "$W/../sim-fleetbench-failed" && cp "$W"/log/cell-* "$W/log/serve.log" "$W/../sim-fleetbench-failed/" 2>/dev/null
		tail -n 3 "$W"/log/cell-*.err >&"$ERRFD"
		die "$tr $op on $n nodes: a node failed (logs kept in $W/../sim-fleetbench-failed)"
	fi
	check_trees "$n" "$id" sim || die "$tr $op on $n nodes: a tree is not $to"
	local st
	st=$(python3 - "$W"/log/cell-*.json <<-'PY'
		import json, sys, collections
		xfer, chosen, reason = 0.0, collections.Counter(), ""
		for f in sys.argv[1:]:
		    d = json.load(open(f))
		    t = d.get("transfer") or {}
		    xfer = max(xfer, float(t.get("seconds") or 0))
		    a = d.get("auto")
		    if a:
		        chosen[a.get("chosen", "?")] += 1
		        if f.endswith("cell-n1.json"): reason = a.get("reason", "")
		c = ", ".join("%s ×%d" % kv for kv in sorted(chosen.items())) if chosen else ""
		print("%.2f\t%s\t%s" % (xfer, c, reason.replace("\t", " ")))
	PY
	)
	local xfer chosen reason cpu cmax
	IFS=$'\t' read -r xfer chosen reason <<<"$st"
	read -r cpu cmax < <(cat "$W"/log/cell-n*.cpu | awk '{c = $1 + $2; t += c; if (c > m) m = c} END {printf "%.2f %.2f\n", t, m}')
	local wall
	wall=$(secs "$t0" "$t1")
	record "$tr|$n|$op" "$wall" "$xfer" "$((tx1 - tx0))" "$cpu" "$cmax" "$(model "$tr" "$n" "$F")" "$F" "$chosen" "yes" "$l0" "$(date -u +%FT%TZ)" "" "$reason"
	log "  $tr $op N=$n: $wall s (transfer $xfer s), server sent $((tx1 - tx0)) B, F=$F B, node CPU $cpu s (max $cmax)${chosen:+, auto: $chosen}"
}

for n in $NS; do
	start_serve "$n"
	for tr in "${TRL[@]}"; do
		for op in $OPS; do
			case $op in
			install) wipe_nodes ;;
			v2v3)
				# from the install just done, else from v1 nodes brought to v2 over HTTP
				if [ ! -e "$W/.at-v2-$tr-$n" ]; then
					setup_v1 "$n"
					par "$n" bash -c 'exec '"$LAB"' exec --name '"$L"' $0 -- "$SIM" --store "$W/n/$0/store" checkout --from '"$URL"' --no-sync '"${ID[v2]}"' "$W/n/$0/root" >/dev/null 2>&1' {} ||
						die "setting up v2 nodes failed"
				fi
				;;
			v1v2) setup_v1 "$n" ;;
			esac
			rm -f "$W"/.at-v2-*
			log "$tr $op on $n nodes"
			run_sim "$n" "$tr" "$op"
			[ "$op" = install ] && touch "$W/.at-v2-$tr-$n"
		done
	done
	stop_serve
	cp "$W/log/serve.log" "$W/log/serve-$n.log" 2>/dev/null || true
	: >"$W/log/serve.log"
done

# ------------------------------------------------- SystemImager's ways ---
if [ "$SI" = 1 ]; then
	mkdir -p "$W/si"
	TARF=$W/si/v2.tar.zst
	tar -C "$CORPUS/v2" --numeric-owner --xattrs --xattrs-include='*' --acls -cf - . | zstd -q -3 -T0 -o "$TARF" -f
	TARB=$(stat -c %s "$TARF")
	TREEB=$(du -sb "$CORPUS/v2" | cut -f1)
	cat >"$W/si/rsyncd.conf" <<-EOF
		address = $SRV
		port = $RSYNC_PORT
		uid = root
		gid = root
		use chroot = no
		numeric ids = yes
		reverse lookup = no
		read only = yes
		max connections = 0
		log file = $W/log/rsyncd.log
		[v1]
			path = $CORPUS/v1
		[v2]
			path = $CORPUS/v2
		[v3]
			path = $CORPUS/v3
	EOF
	X srv -- rsync --daemon --no-detach --config="$W/si/rsyncd.conf" 2>>"$W/log/rsyncd.log" &
	PIDS+=($!)
	wait_port $RSYNC_PORT
	# aria2c: the tarball's torrent, whitelisted in Debian's private opentracker
	printf 'listen.tcp_udp %s:6969\naccess.whitelist %s\n' $SRV "$W/si/whitelist.txt" >"$W/si/opentracker.conf"
	mktorrent -l 20 -a "http://$SRV:6969/announce" -o "$W/si/v2.torrent" "$TARF" >/dev/null
	aria2c -S "$W/si/v2.torrent" | awk '/Info Hash/ {print $3}' >"$W/si/whitelist.txt"
	X srv -- opentracker -f "$W/si/opentracker.conf" >"$W/log/tracker.log" 2>&1 &
	PIDS+=($!)
	wait_port 6969
	ARIA=(aria2c -q --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=true
		--file-allocation=none --allow-overwrite=true --check-integrity=false --bt-stop-timeout=0 --bt-max-peers=55)
	X srv -- "${ARIA[@]}" -V --seed-ratio=0.0 --seed-time=100000 --listen-port=6890 --dir="$W/si" "$W/si/v2.torrent" >"$W/log/seed.log" 2>&1 &
	PIDS+=($!)
	wait_port 6890

	# run_si N WAY OP ID F CMD: CMD (bash, $0 = node) on all N nodes at once; records the cell.
	run_si() {
		local n=$1 way=$2 op=$3 id=$4 F=$5 cmd=$6 note=${7:-} sender=${8:-}
		rm -f "$W"/log/cell-*
		sync
		local tx0 t0 pids=() h l0 spid="" xt=""
		l0=$(load)
		tx0=$(txsrv)
		t0=$(now)
		for h in $(nodes "$n"); do
			X "$h" -- /usr/bin/env time -f "%U %S" -o "$W/log/cell-$h.cpu" bash -c "$cmd" "$h" >"$W/log/cell-$h.err" 2>&1 &
			pids+=($!)
		done
		if [ -n "$sender" ]; then
			# udp-sender starts when all N receivers are connected (--min-receivers)
			X srv -- bash -c "$sender" >"$W/log/cell-sender.out" 2>&1 &
			spid=$!
			PIDS+=("$spid")
		fi
		local fail=0 p
		if [ -n "$spid" ]; then wait "$spid" || fail=1; xt=$(secs "$t0" "$(now)"); fi
		for p in "${pids[@]}"; do wait "$p" || fail=1; done
		local t1 tx1
		t1=$(now)
		tx1=$(txsrv)
		[ $fail = 0 ] || { tail -n 3 "$W"/log/cell-*.err "$W"/log/cell-sender.out >&"$ERRFD" 2>/dev/null; die "$way $op on $n nodes failed"; }
		local exact=yes
		# SystemImager's trees are reported, not required, exact
		check_trees "$n" "$id" si 2>"$W/log/cell-diff" ||
			exact="no, $(grep -c ' differs from ' "$W/log/cell-diff") of $n nodes: $(grep -v ' differs from ' "$W/log/cell-diff" | sort -u | head -3 | tr '\n' ' ')"
		local cpu cmax
		read -r cpu cmax < <(cat "$W"/log/cell-n*.cpu | awk '{c = $1 + $2; t += c; if (c > m) m = c} END {printf "%.2f %.2f\n", t, m}')
		record "$way|$n|$op" "$(secs "$t0" "$t1")" "${xt:-–}" "$((tx1 - tx0))" "$cpu" "$cmax" "$(model "$way" "$n" "$F")" "$F" "" "$exact" "$l0" "$(date -u +%FT%TZ)" "$note" ""
		log "  $way $op N=$n: $(secs "$t0" "$t1") s, server sent $((tx1 - tx0)) B, node CPU $cpu s, exact $exact"
	}
	RSYNC="rsync -aHAX --numeric-ids --delete"
	for n in $SI_NS; do
		log "SystemImager rsync: v1 -> v2 on $n nodes"
		wipe_nodes
		par "$n" bash -c 'mkdir -p "$W/n/$0" && cp -a "$1/v1" "$W/n/$0/root"' {} "$CORPUS" || die "cp -a v1 failed"
		run_si "$n" si-rsync v1v2 "${ID[v2]}" "" "exec $RSYNC rsync://$SRV:$RSYNC_PORT/v2/ $W/n/\$0/root/"
		log "SystemImager rsync: v2 -> v3 on $n nodes"
		run_si "$n" si-rsync v2v3 "${ID[v3]}" "" "exec $RSYNC rsync://$SRV:$RSYNC_PORT/v3/ $W/n/\$0/root/"
		log "SystemImager rsync: install v2 on $n nodes"
		wipe_nodes
		par "$n" mkdir -p "$W/n/{}/root" || die "mkdir failed"
		run_si "$n" si-rsync install "${ID[v2]}" "$TREEB" "exec $RSYNC rsync://$SRV:$RSYNC_PORT/v2/ $W/n/\$0/root/"

		log "SystemImager udpcast: install v2 on $n nodes"
		wipe_nodes
		par "$n" mkdir -p "$W/n/{}/root" || die "mkdir failed"
		run_si "$n" si-udpcast install "${ID[v2]}" "$TARB" \
			"set -o pipefail; timeout 600 udp-receiver --nokbd --interface eth0 --portbase 9000 2>/dev/null | zstd -q -d | tar -C $W/n/\$0/root --numeric-owner --xattrs --xattrs-include='*' --acls -xpf -" \
			"" "timeout 600 udp-sender --nokbd --interface eth0 --portbase 9000 --file $TARF --max-bitrate ${MRATE,,} --min-receivers $n --max-wait 60"

		log "SystemImager tarball+aria2c: install v2 on $n nodes"
		wipe_nodes
		par "$n" mkdir -p "$W/n/{}/root" || die "mkdir failed"
		run_si "$n" si-aria2c install "${ID[v2]}" "$TARB" \
			"set -o pipefail; ${ARIA[*]} --seed-time=0 --listen-port=6881 --dir=$W/n/\$0 $W/si/v2.torrent && zstd -q -d -c $W/n/\$0/v2.tar.zst | tar -C $W/n/\$0/root --numeric-owner --xattrs --xattrs-include='*' --acls -xpf -"
		for op in v2v3 v1v2; do
			for way in si-udpcast si-aria2c; do
				record "$way|$n|$op" "–" "–" "–" "–" "–" "–" "$TARB" "" "–" "–" "$(date -u +%FT%TZ)" "the whole tarball again: as its install" ""
			done
		done
	done
fi
wipe_nodes
meta "run: " "$START_DATE, load average at start $START_LOAD, at end $(uptime | sed 's/.*load average: //') (uptime)"
report
