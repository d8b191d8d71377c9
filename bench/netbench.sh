#!/usr/bin/env bash
# bench/netbench.sh [OUTFILE] — measure sim's network transport (sim serve /
# sim checkout --from, HTTP) against an rsync daemon, in the network lab of
# testdata/lab.sh, and print ONE markdown table (stdout and OUTFILE, default
# bench/netresults.md). Progress goes to stderr, logs to a temp dir.
#
#   1. update v2 -> v3 of a node: bytes on the wire   (target <= 20 KB, stretch <= 8 KB)
#   2. update v1 -> v2 of a node: bytes on the wire   (target <= rsync/2, stretch <= 14.2 MB)
#   3. install v2 into an empty dir over a 1gbit link: wire bytes vs
#      `tar -C v2 -cf - . | zstd -3` (target <= 1.05x), link utilization during
#      the transfer (target >= 90%), transfer and total time
#   4. 8 nodes install v2 at once through a 200mbit server uplink (nodes
#      1gbit): uplink utilization over the busy period (target >= 90%), peak
#      RSS of sim serve (target < 200 MB)
#
# Environment:
#   SIM            sim binary (default ./bin/sim; `make build` runs if missing)
#   SIM_CORPUS     corpus dir, see testdata/mkcorpus.sh (default /var/cache/sim/corpus)
#   NETBENCH_DIR   scratch dir, wiped at start and end (default /var/tmp/sim-netbench)
#   NETBENCH_KEEP=1  keep NETBENCH_DIR (stores, checkouts, samples, logs)
#   NETBENCH_WAIT  seconds to wait for a running bench/bench.sh to finish
#                  before each timed step (default 1200; timings interfere)
#
# How bytes are counted: eth0 counters of the lab hosts (lab.sh bytes: same
# counters as /sys/class/net/eth0/statistics, read inside the namespace).
# With GSO a bulk transfer of P payload bytes shows ~P (+0.2%), not P plus
# every segment's headers (see lab.sh). "node rx+tx" is everything the node's
# NIC received and sent (data, requests, ACKs, handshakes) from just before
# the command to 0.5 s after it exited; "server tx" is the server's sent bytes
# over the same span. sim's own figure is transfer.wire_bytes of
# `checkout --json` (response bytes read), rsync's is "Total bytes received"
# of --stats.
# Rates: a link of RATE carries at most RATE/8 bytes/s at L2 (tbf counts IP +
# 14 bytes of Ethernet header per 1448-byte TCP segment), so TCP payload tops
# out at ~95.6% of RATE/8; utilization here is counter bytes / (RATE/8).
# Times: throughput samples come from a sampler in the namespace that reads
# the counters (python3, wall clock) every 10 ms in (3) and every 100 ms in
# (4); the transfer time is the time between 1% and 99% of the command's
# bytes, linearly interpolated between samples ((3) also reports the figure
# from every 10th sample, i.e. a 100 ms sampler: with a transfer of well
# under a second, 100 ms samples blur its start and end). The busy period of (4) runs from the last sample before
# the server sent anything to the last sample
# that rose by more than 1000 bytes (the FIN/ACKs sent when clients exit,
# after writing their files, are not busy time); the busy period may be
# overestimated by up to 0.2 s, so utilization is if anything underestimated.
# Both tools run without fsync (sim --no-sync; rsync never fsyncs); a `sync`
# and a read of the server's inputs (sim's store, rsync's tree) into the page
# cache happen before each timed step, untimed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/netresults.md}
SIM=${SIM:-./bin/sim}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${NETBENCH_DIR:-/var/tmp/sim-netbench}
WAIT_MAX=${NETBENCH_WAIT:-1200}
LAB=$ROOT/testdata/lab.sh
L=simnetbench # lab name
SRV_IP=198.18.0.1
SIM_PORT=7480
RSYNC_PORT=8730
URL=http://$SRV_IP:$SIM_PORT
RURL=rsync://$SRV_IP:$RSYNC_PORT
RSYNC_FLAGS=(-aHAX --delete --stats)

# A trap can run while a command's redirection is in effect (e.g. stderr into
# a log file that cleanup then wipes): log to a saved copy of stderr.
exec {ERRFD}>&2
log() { printf '[netbench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------- checks ---
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"
case $W in /?*) ;; *) die "NETBENCH_DIR must be an absolute path other than /" ;; esac
W=${W%/}
case $CORPUS/ in "$W"/*) die "NETBENCH_DIR ($W) must not contain the corpus" ;; esac
[[ $WAIT_MAX =~ ^[0-9]+$ ]] || die "NETBENCH_WAIT must be a number of seconds"

need=()
for t in rsync:rsync bc:bc zstd:zstd python3:python3 /usr/bin/time:time ip:iproute2 tar:tar; do
	command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || die "apt-get update failed"
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi
if [ ! -x "$SIM" ] && [ "$SIM" = ./bin/sim ]; then
	log "building sim (make build)"
	make -s build >&2
fi
[ -x "$SIM" ] || die "sim binary not found at '$SIM'"
SIM=$(cd "$(dirname "$SIM")" && pwd)/$(basename "$SIM")

# ------------------------------------------------------ cleanup machinery ---
PIDS=() # background processes we started (servers, samplers, clients)
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
	# all of them run in the lab: down KILLs what TERM did not stop in 2 s
	"$LAB" down --name "$L" 2>/dev/null || true
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "${NETBENCH_KEEP:-0}" = 1 ]; then log "kept $W (logs in $W/log)"; else wipe || true; fi
	if [ "$rc" -ne 0 ]; then
		log "FAILED (exit $rc)$([ "${NETBENCH_KEEP:-0}" = 1 ] || echo '; rerun with NETBENCH_KEEP=1 to keep the logs')"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget() { # remove PID $1 from PIDS
	local p keep=()
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# Timings interfere with the CPU-heavy bench/bench.sh: wait for it to end.
INTERFERENCE=()
quiet_cpu() { # $1 = step name
	local waited=0
	while pgrep -f bench/bench.sh >/dev/null 2>&1; do
		[ "$waited" -eq 0 ] && log "bench/bench.sh is running; waiting (up to ${WAIT_MAX}s) before $1"
		if [ "$waited" -ge "$WAIT_MAX" ]; then
			log "WARNING: bench/bench.sh still running; measuring $1 anyway"
			INTERFERENCE+=("$1")
			return 0
		fi
		sleep 5
		waited=$((waited + 5))
	done
}
check_quiet() { # after a step: note if bench.sh started meanwhile
	if pgrep -f bench/bench.sh >/dev/null 2>&1; then
		log "WARNING: bench/bench.sh ran during $1"
		INTERFERENCE+=("$1")
	fi
	return 0
}

# ---------------------------------------------------------------- helpers ---
now() { echo "$EPOCHREALTIME"; }
lx() { "$LAB" exec --name "$L" "$@"; } # lx HOST -- CMD... (not for &: $! would be a subshell)
bytes() { "$LAB" bytes --name "$L" "$1"; } # -> "rx tx"

lab_up() {
	"$LAB" down --name "$L" 2>/dev/null || true
	"$LAB" up --name "$L" "$@" 2>>"$W/log/lab.log" || die "lab up $* failed (see $W/log/lab.log)"
	log "lab up: $*"
}
lab_down() { "$LAB" down --name "$L" 2>>"$W/log/lab.log" || true; }

wait_port() { # port: probe from n1 until something listens
	local i
	for ((i = 0; i < 100; i++)); do
		lx n1 -- bash -c "exec 3<>/dev/tcp/$SRV_IP/$1" 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on $SRV_IP:$1 in the lab"
}

SIM_PID="" RSYNCD_PID=""
start_sim_server() {
	"$LAB" exec --name "$L" srv -- "$SIM" --store "$W/srv" serve --listen "$SRV_IP:$SIM_PORT" 2>>"$W/log/serve.log" &
	SIM_PID=$!
	PIDS+=("$SIM_PID")
	wait_port "$SIM_PORT"
	[ "$(cat "/proc/$SIM_PID/comm" 2>/dev/null)" = sim ] || die "pid $SIM_PID is not sim serve"
}
# stop_sim_server: sets HWM (VmHWM in kB, read just before stopping it) and
# SERVE_SENT (the "stopped; ..." line sim serve prints)
stop_sim_server() {
	HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SIM_PID/status")
	kill -TERM "$SIM_PID"
	wait "$SIM_PID" || true
	forget "$SIM_PID"
	SIM_PID=""
	SERVE_SENT=$(grep 'stopped;' "$W/log/serve.log" | tail -1 | sed 's/.*stopped; //')
}
start_rsyncd() {
	"$LAB" exec --name "$L" srv -- rsync --daemon --no-detach --config="$W/rsyncd.conf" 2>>"$W/log/rsyncd.stderr" &
	RSYNCD_PID=$!
	PIDS+=("$RSYNCD_PID")
	wait_port "$RSYNC_PORT"
}
stop_rsyncd() {
	kill -TERM "$RSYNCD_PID" 2>/dev/null || true
	wait "$RSYNCD_PID" || true
	forget "$RSYNCD_PID"
	RSYNCD_PID=""
}

# Counter sampler inside a namespace: "time rx tx cpu [rss_kB]" every
# INTERVAL seconds; cpu is the machine's busy CPU time so far (jiffies, all
# CPUs: /proc/stat minus idle and iowait); with a PID, also the summed RSS
# of that process and its descendants.
SAMPLER_PID=""
start_sampler() { # HOST FILE INTERVAL [PID]
	"$LAB" exec --name "$L" "$1" -- python3 "$W/tool.py" sample "$2" "$3" "${4:-0}" &
	SAMPLER_PID=$!
	PIDS+=("$SAMPLER_PID")
	local i
	for ((i = 0; i < 50; i++)); do [ -s "$2" ] && return 0; sleep 0.05; done
	die "sampler did not start"
}
stop_sampler() {
	sleep 0.3 # a few samples after the end
	kill -TERM "$SAMPLER_PID" 2>/dev/null || true
	wait "$SAMPLER_PID" 2>/dev/null || true
	forget "$SAMPLER_PID"
	SAMPLER_PID=""
}

# Untimed preparation before every timed step.
warm() { # read files under the given paths into the page cache
	find "$@" -type f -print0 | xargs -0 -r cat >/dev/null
}
prep() { sync; warm "$@"; }

# ---------------------------------------------------------------- python ---
mkdir_w() { wipe; mkdir -p "$W"/{log,s}; }
write_tool() {
	cat >"$W/tool.py" <<'EOF'
import os, sys, time, json, signal

def cpu_busy():
    f = open('/proc/stat').readline().split()[1:]
    v = [int(x) for x in f]
    return sum(v[:8]) - v[3] - v[4]   # user..steal minus idle, iowait

def sample(path, interval, root):
    root, interval = int(root), float(interval)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    d = '/sys/class/net/eth0/statistics/'
    rx, tx = open(d + 'rx_bytes'), open(d + 'tx_bytes')
    page = os.sysconf('SC_PAGE_SIZE') // 1024
    def rss_tree():
        kids = {}
        for p in os.listdir('/proc'):
            if not p.isdigit():
                continue
            try:
                s = open('/proc/%s/stat' % p).read()
            except OSError:
                continue
            ppid = int(s[s.rindex(')') + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(p))
        tot, todo = 0, [root]
        while todo:
            p = todo.pop()
            try:
                tot += int(open('/proc/%d/statm' % p).read().split()[1]) * page
            except OSError:
                pass
            todo.extend(kids.get(p, []))
        return tot
    out = open(path, 'w', buffering=1)
    nxt = time.monotonic()
    while True:
        rx.seek(0); tx.seek(0)
        line = '%.6f %s %s %d' % (time.time(), rx.read().strip(), tx.read().strip(), cpu_busy())
        if root:
            line += ' %d' % rss_tree()
        out.write(line + '\n')
        nxt += interval
        dt = nxt - time.monotonic()
        if dt > 0:
            time.sleep(dt)
        else:
            nxt = time.monotonic()

def load(path, col):
    rows = []
    for l in open(path):
        f = l.split()
        if len(f) > col:
            rows.append((float(f[0]), int(f[col])))
    return rows

def cross(rows, level):
    # interpolated time at which the counter reached level
    for i in range(1, len(rows)):
        if rows[i][1] >= level:
            (t0, c0), (t1, c1) = rows[i - 1], rows[i]
            if c1 == c0:
                return t1
            return t0 + (level - c0) / (c1 - c0) * (t1 - t0)
    return rows[-1][0]

def cpu_between(path, a, b):
    # mean busy CPUs between wall times a and b (nearest samples inside)
    rows = [r for r in load(path, 3) if a <= r[0] <= b]
    if len(rows) < 2:
        return 0.0
    hz = os.sysconf('SC_CLK_TCK')
    return (rows[-1][1] - rows[0][1]) / hz / (rows[-1][0] - rows[0][0])

def window(path, col, start, every=1):
    # transfer window of the bytes counted after wall time start: prints
    # total bytes, 1%..99% duration, bytes/s over it, mean busy CPUs in it;
    # every=N uses only every Nth sample (a coarser sampler)
    rows = load(path, int(col))[::int(every)]
    start = float(start)
    before = [r for r in rows if r[0] <= start] or rows[:1]
    c0 = before[-1][1]
    cN = rows[-1][1]
    D = cN - c0
    if D <= 0:
        print(0, 0, 0, 0); return
    t1, t99 = cross(rows, c0 + 0.01 * D), cross(rows, c0 + 0.99 * D)
    dur = t99 - t1
    print(D, '%.3f' % dur, '%.0f' % (0.98 * D / dur if dur > 0 else 0),
          '%.2f' % cpu_between(path, t1, t99))

def busy(path, col):
    # busy period: from the last sample before the counter first rose to
    # the last sample that rose by more than 1000 bytes (so the FIN/ACKs of
    # connections closed when the clients exit, after writing their files,
    # do not count as busy); prints bytes in it, seconds, bytes/s
    rows = load(path, int(col))
    c0 = rows[0][1]
    i = next(k for k, r in enumerate(rows) if r[1] > c0)
    j = max(k for k in range(1, len(rows)) if rows[k][1] - rows[k - 1][1] > 1000)
    a, b = rows[i - 1][0], rows[j][0]
    D = rows[j][1] - c0
    print(D, '%.3f' % (b - a), '%.0f' % (D / (b - a)), '%.2f' % cpu_between(path, a, b))

def peak(path):
    print(max(int(l.split()[4]) for l in open(path) if len(l.split()) > 4))

def wire(*files):
    # sum of transfer.wire_bytes over checkout --json outputs
    print(sum(json.load(open(f))['transfer']['wire_bytes'] for f in files))

def field(path, *keys):
    v = json.load(open(path))
    for k in keys:
        v = v[k]
    print(v)

cmd = sys.argv[1]
globals()[cmd](*sys.argv[2:])
EOF
}
tool() { python3 "$W/tool.py" "$@"; }

rsync_recv() { # rsync --stats log -> "Total bytes received" as a number
	awk -F': ' '/^Total bytes received:/ { gsub(/[,.]/, "", $2); print $2 + 0 }' "$1"
}

# --------------------------------------------------------------- formats ---
# decimal units, like the figures in the issue (OSTree's g_format_size)
hb() {
	awk -v b="$1" 'BEGIN {
		if (b < 1000) printf "%d B", b
		else if (b < 1e6) printf "%.1f KB", b / 1e3
		else if (b < 1e9) printf "%.1f MB", b / 1e6
		else printf "%.2f GB", b / 1e9 }'
}
num() { sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<<"$1"; }
bf() { echo "$(num "$1") B ($(hb "$1"))"; } # "14,321 B (14.3 KB)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.3f\n", a / b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", 100 * a / b }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
ok() { if "$@"; then echo "✅"; else echo "❌"; fi; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", b - a }'; }

# ================================================================== setup ===
"$ROOT/testdata/mkcorpus.sh" "$CORPUS" >/dev/null || die "mkcorpus.sh failed"
V1=$CORPUS/v1 V2=$CORPUS/v2 V3=$CORPUS/v3
for v in "$V1" "$V2" "$V3"; do [ -d "$v" ] || die "corpus tree $v missing"; done

mkdir_w
write_tool
START=$(now)
log "scratch $W, sim $SIM, corpus $CORPUS"

cat >"$W/rsyncd.conf" <<EOF
# minimal rsync daemon for netbench (lab only)
address = $SRV_IP
port = $RSYNC_PORT
uid = root
gid = root
use chroot = no
numeric ids = yes
reverse lookup = no
read only = yes
list = yes
log file = $W/log/rsyncd.log
[v1]
	path = $V1
[v2]
	path = $V2
[v3]
	path = $V3
EOF

quiet_cpu "server store build"
log "server store: commit v1, v2, v3"
"$SIM" --store "$W/srv" init >"$W/log/store.log" 2>&1
for v in v1 v2 v3; do
	"$SIM" --store "$W/srv" commit "$CORPUS/$v" --image deb -m "$v" >>"$W/log/store.log" 2>&1 ||
		die "commit $v failed (see $W/log/store.log)"
	"$SIM" --store "$W/srv" tag "$v" deb >>"$W/log/store.log" 2>&1 || die "tag $v failed"
done

log "reference size: tar -C v2 -cf - . | zstd -3"
ZSTD_BYTES=$(tar -C "$V2" -cf - . | zstd -3 -q -c | wc -c)

# ====================================================== 1, 2: node updates ===
# Unshaped lab, one node: only bytes matter here.
lab_up --nodes 1
start_sim_server
start_rsyncd

# measure NAME CMD... : runs CMD, records node rx+tx and server tx deltas
# in globals M_NODE M_SRV M_T (seconds)
measure() {
	local n0rx n0tx s0tx n1rx n1tx s1tx t0 t1 rc=0
	read -r n0rx n0tx < <(bytes n1)
	read -r _ s0tx < <(bytes srv)
	t0=$(now)
	"$@" || rc=$?
	t1=$(now)
	sleep 0.5 # FIN/ACK of the closing connections
	read -r n1rx n1tx < <(bytes n1)
	read -r _ s1tx < <(bytes srv)
	[ "$rc" -eq 0 ] || die "$* failed (exit $rc); see $W/log"
	M_NODE=$(((n1rx - n0rx) + (n1tx - n0tx)))
	M_SRV=$((s1tx - s0tx))
	M_T=$(secs "$t0" "$t1")
}

sim_co() { # STORE REF DIR JSONOUT
	lx n1 -- "$SIM" --store "$1" checkout --from "$URL" "$2" "$3" --json --no-sync >"$4" 2>>"$W/log/checkout.log"
}
rsync_co() { # MODULE DIR LOG
	lx n1 -- rsync "${RSYNC_FLAGS[@]}" "$RURL/$1/" "$2/" >"$3" 2>&1
}

declare -A R # results
upd() { # FROM TO KEY
	local from=$1 to=$2 k=$3
	local d=$W/s/$k
	quiet_cpu "update $from->$to"
	rm -rf "$d"
	mkdir -p "$d"
	log "sim: node checks out $from, then updates to $to"
	sim_co "$d/store" "$from" "$d/sim" "$W/log/$k-sim-$from.json" || die "sim checkout $from failed"
	prep "$W/srv"
	measure sim_co "$d/store" "$to" "$d/sim" "$W/log/$k-sim.json"
	R[$k.sim.node]=$M_NODE R[$k.sim.srv]=$M_SRV R[$k.sim.t]=$M_T
	R[$k.sim.self]=$(tool field "$W/log/$k-sim.json" transfer wire_bytes)
	R[$k.sim.written]=$(tool field "$W/log/$k-sim.json" written)
	log "  sim: node rx+tx $(bf "$M_NODE"), server tx $(bf "$M_SRV"), wire_bytes ${R[$k.sim.self]}, ${M_T}s"
	log "rsync: node gets $from, then updates to $to"
	rsync_co "$from" "$d/rsync" "$W/log/$k-rsync-$from.log" || die "rsync $from failed"
	prep "$CORPUS/$to"
	measure rsync_co "$to" "$d/rsync" "$W/log/$k-rsync.log"
	R[$k.rs.node]=$M_NODE R[$k.rs.srv]=$M_SRV R[$k.rs.t]=$M_T
	R[$k.rs.self]=$(rsync_recv "$W/log/$k-rsync.log")
	log "  rsync: node rx+tx $(bf "$M_NODE"), server tx $(bf "$M_SRV"), received ${R[$k.rs.self]}, ${M_T}s"
	# both results must be exactly the target version
	local c
	c=$(tool field "$W/log/$k-sim.json" commit)
	[ -z "$("$SIM" --store "$d/store" diff "$c" "$d/sim/" 2>&1)" ] || die "sim checkout of $to differs from $to"
	# rsync's quick check (size + mtime) can miss files: the corpus clamps
	# mtimes, so a file may differ from the previous version in content only.
	# Recorded (and then measured with -c too), not fatal.
	local stale
	stale=$(rsync -naHAXc --delete --out-format='%n' "$CORPUS/$to/" "$d/rsync/" 2>&1)
	R[$k.rs.stale]=$(printf '%s' "$stale" | grep -c . || true)
	if [ "${R[$k.rs.stale]}" -gt 0 ]; then
		R[$k.rs.stalelist]=$(printf '%s' "$stale" | head -5 | tr '\n' ' ')
		log "  rsync left ${R[$k.rs.stale]} entries different from $to: ${R[$k.rs.stalelist]}"
		log "rsync -c: node gets $from, then updates to $to (checksums instead of the quick check)"
		rm -rf "$d/rsync"
		rsync_co "$from" "$d/rsync" "$W/log/$k-rsyncc-$from.log" || die "rsync $from failed"
		prep "$CORPUS/$to"
		RSYNC_FLAGS+=(-c)
		measure rsync_co "$to" "$d/rsync" "$W/log/$k-rsyncc.log"
		unset 'RSYNC_FLAGS[-1]'
		R[$k.rsc.node]=$M_NODE R[$k.rsc.srv]=$M_SRV R[$k.rsc.t]=$M_T
		log "  rsync -c: node rx+tx $(bf "$M_NODE"), server tx $(bf "$M_SRV"), ${M_T}s"
	fi
	check_quiet "update $from->$to"
	rm -rf "$d"
}
upd v2 v3 u23
upd v1 v2 u12

stop_rsyncd
stop_sim_server
lab_down

# ============================================ 3: full install over 1gbit ===
LINK1=125000000 # 1gbit in bytes/s
lab_up --nodes 1 --server-rate 1gbit --node-rate 1gbit
start_sim_server
start_rsyncd

install1() { # KIND (sim|rsync)
	local k=$1 d=$W/s/i3 s=$W/log/i3-$1.samples t0 t1 n0rx n0tx n1rx n1tx
	quiet_cpu "install $k"
	rm -rf "$d"
	mkdir -p "$d"
	if [ "$k" = sim ]; then prep "$W/srv"; else prep "$V2"; fi
	start_sampler n1 "$s" 0.01
	read -r n0rx n0tx < <(bytes n1)
	t0=$(now)
	if [ "$k" = sim ]; then
		lx n1 -- /usr/bin/time -f '%e %U %S %M' -o "$W/log/i3-sim.time" \
			"$SIM" --store "$d/store" checkout --from "$URL" v2 "$d/dir" --json --no-sync \
			>"$W/log/i3-sim.json" 2>>"$W/log/checkout.log" || die "sim install failed"
	else
		lx n1 -- /usr/bin/time -f '%e %U %S %M' -o "$W/log/i3-rsync.time" \
			rsync "${RSYNC_FLAGS[@]}" "$RURL/v2/" "$d/dir/" >"$W/log/i3-rsync.log" 2>&1 || die "rsync install failed"
	fi
	t1=$(now)
	sleep 0.5
	read -r n1rx n1tx < <(bytes n1)
	stop_sampler
	R[i3.$k.node]=$(((n1rx - n0rx) + (n1tx - n0tx)))
	R[i3.$k.total]=$(secs "$t0" "$t1")
	read -r "R[i3.$k.rx]" "R[i3.$k.xfer]" "R[i3.$k.bps]" "R[i3.$k.cpu]" < <(tool window "$s" 1 "$t0")
	read -r _ "R[i3.$k.xfer100]" "R[i3.$k.bps100]" _ < <(tool window "$s" 1 "$t0" 10)
	read -r _ "R[i3.$k.user]" "R[i3.$k.sys]" "R[i3.$k.maxrss]" <"$W/log/i3-$k.time"
	if [ "$k" = sim ]; then
		R[i3.sim.self]=$(tool field "$W/log/i3-sim.json" transfer wire_bytes)
		local c
		c=$(tool field "$W/log/i3-sim.json" commit)
		[ -z "$("$SIM" --store "$d/store" diff "$c" "$d/dir/" 2>&1)" ] || die "sim install differs from v2"
	else
		R[i3.rsync.self]=$(rsync_recv "$W/log/i3-rsync.log")
	fi
	log "  $k: node rx+tx $(bf "${R[i3.$k.node]}"), transfer ${R[i3.$k.xfer]}s at $(hb "${R[i3.$k.bps]}")/s, total ${R[i3.$k.total]}s (client cpu user ${R[i3.$k.user]}s sys ${R[i3.$k.sys]}s)"
	check_quiet "install $k"
	rm -rf "$d"
	sync
}
log "install v2 over 1gbit: sim"
install1 sim
log "install v2 over 1gbit: rsync"
install1 rsync
stop_sim_server
stop_rsyncd
lab_down

# ================================= 4: 8 nodes at once, 200mbit uplink ===
LINK4=25000000 # 200mbit in bytes/s
N4=8
lab_up --nodes "$N4" --server-rate 200mbit --node-rate 1gbit
start_sim_server
start_rsyncd

fleet() { # KIND
	local k=$1 s=$W/log/f4-$1.samples t0 t1 i pids=() rc=0 watch
	quiet_cpu "fleet $k"
	rm -rf "$W/s/f4"
	for ((i = 1; i <= N4; i++)); do mkdir -p "$W/s/f4/n$i"; done
	if [ "$k" = sim ]; then prep "$W/srv"; watch=$SIM_PID; else prep "$V2"; watch=$RSYNCD_PID; fi
	local cpu0
	cpu0=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$watch/stat")
	start_sampler srv "$s" 0.1 "$watch"
	t0=$(now)
	for ((i = 1; i <= N4; i++)); do
		if [ "$k" = sim ]; then
			"$LAB" exec --name "$L" "n$i" -- "$SIM" --store "$W/s/f4/n$i/store" checkout --from "$URL" v2 "$W/s/f4/n$i/dir" --json --no-sync \
				>"$W/log/f4-sim-n$i.json" 2>>"$W/log/checkout.log" &
		else
			"$LAB" exec --name "$L" "n$i" -- rsync "${RSYNC_FLAGS[@]}" "$RURL/v2/" "$W/s/f4/n$i/dir/" >"$W/log/f4-rsync-n$i.log" 2>&1 &
		fi
		pids+=($!)
		PIDS+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || rc=$?
		forget "$i"
	done
	t1=$(now)
	stop_sampler
	[ "$rc" -eq 0 ] || die "a $k client of the fleet failed (exit $rc); see $W/log"
	R[f4.$k.t]=$(secs "$t0" "$t1")
	read -r "R[f4.$k.bytes]" "R[f4.$k.busy]" "R[f4.$k.bps]" "R[f4.$k.cpuall]" < <(tool busy "$s" 2)
	R[f4.$k.util]=$(pct "${R[f4.$k.bps]}" "$LINK4")
	read -r _ "R[f4.$k.xfer]" "R[f4.$k.bps99]" _ < <(tool window "$s" 2 "$t0")
	R[f4.$k.util99]=$(pct "${R[f4.$k.bps99]}" "$LINK4")
	R[f4.$k.rss]=$(tool peak "$s")
	R[f4.$k.cpu]=$(awk -v a="$cpu0" -v b="$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$watch/stat")" \
		-v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", (b - a) / hz }')
	if [ "$k" = sim ]; then
		R[f4.sim.self]=$(tool wire "$W"/log/f4-sim-n*.json)
	else
		local f sum=0
		for f in "$W"/log/f4-rsync-n*.log; do sum=$((sum + $(rsync_recv "$f"))); done
		R[f4.rsync.self]=$sum
	fi
	log "  $k: ${R[f4.$k.t]}s for all $N4, server tx $(bf "${R[f4.$k.bytes]}") in a busy period of ${R[f4.$k.busy]}s = ${R[f4.$k.util]}% of 200mbit (1-99%: ${R[f4.$k.util99]}%)"
	check_quiet "fleet $k"
	rm -rf "$W/s/f4"
	sync
}
log "8 nodes install v2 at once via a 200mbit uplink: sim"
fleet sim
stop_sim_server
R[f4.sim.hwm]=$HWM
log "  sim serve VmHWM: $HWM kB; sim serve says: $SERVE_SENT"
log "8 nodes install v2 at once via a 200mbit uplink: rsync"
fleet rsync
stop_rsyncd
lab_down
END=$(now)

# ================================================================== table ===
KB20=20000 KB8=8000 MB142=14200000
kb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1000 }'; } # kB -> MB (decimal)
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
{
	echo "| Measurement | sim | rsync | sim / rsync | Target (issue) | sim vs target |"
	echo "|---|---|---|---|---|---|"
	for u in u23 u12; do
		if [ $u = u23 ]; then
			name="1. Update v2→v3"
			tgt="≤ 20 KB (stretch ≤ 8 KB; OSTree static delta 17.3 KB, rsync 223 KB)"
			verdict() { echo "$(ok le "$1" $KB20) ≤ 20 KB, $(ok le "$1" $KB8) ≤ 8 KB"; }
		else
			name="2. Update v1→v2"
			tgt="≤ ½ rsync (stretch ≤ 14.2 MB, OSTree static delta)"
			verdict() { echo "$(ok le "$(ratio "$1" "$2")" 0.5) ≤ ½ rsync, $(ok le "$1" $MB142) ≤ 14.2 MB"; }
		fi
		row "$name: node rx+tx (lab counters)" "$(bf "${R[$u.sim.node]}")" "$(bf "${R[$u.rs.node]}")" \
			"$(ratio "${R[$u.sim.node]}" "${R[$u.rs.node]}")" "$tgt" "$(verdict "${R[$u.sim.node]}" "${R[$u.rs.node]}")"
		row "$name: server tx (lab counters)" "$(bf "${R[$u.sim.srv]}")" "$(bf "${R[$u.rs.srv]}")" \
			"$(ratio "${R[$u.sim.srv]}" "${R[$u.rs.srv]}")" "same" "$(verdict "${R[$u.sim.srv]}" "${R[$u.rs.srv]}")"
		row "$name: tool's own count (sim wire_bytes / rsync bytes received)" "$(bf "${R[$u.sim.self]}")" "$(bf "${R[$u.rs.self]}")" \
			"$(ratio "${R[$u.sim.self]}" "${R[$u.rs.self]}")" "same" "$(verdict "${R[$u.sim.self]}" "${R[$u.rs.self]}")"
	done
	zr=$(ratio "${R[i3.sim.node]}" "$ZSTD_BYTES")
	row "3. Install v2, 1gbit link: node rx+tx (lab counters)" "$(bf "${R[i3.sim.node]}")" "$(bf "${R[i3.rsync.node]}")" \
		"$(ratio "${R[i3.sim.node]}" "${R[i3.rsync.node]}")" \
		"≤ 1.05 × \`tar -C v2 -cf - . \| zstd -3\` = $(bf "$ZSTD_BYTES")" "$(ok le "$zr" 1.05) ${zr} × zstd -3"
	row "3. Install v2, 1gbit: tool's own count" "$(bf "${R[i3.sim.self]}")" "$(bf "${R[i3.rsync.self]}")" \
		"$(ratio "${R[i3.sim.self]}" "${R[i3.rsync.self]}")" "—" "$(ratio "${R[i3.sim.self]}" "$ZSTD_BYTES") × zstd -3"
	us=$(pct "${R[i3.sim.bps]}" $LINK1) ur=$(pct "${R[i3.rsync.bps]}" $LINK1)
	row "3. Install v2, 1gbit: throughput during transfer (1%–99% of bytes, node rx; 10 ms samples, in brackets every 10th = 100 ms)" \
		"$(hb "${R[i3.sim.bps]}")/s = ${us}% of link ($(pct "${R[i3.sim.bps100]}" $LINK1)%)" \
		"$(hb "${R[i3.rsync.bps]}")/s = ${ur}% of link ($(pct "${R[i3.rsync.bps100]}" $LINK1)%)" \
		"$(ratio "${R[i3.sim.bps]}" "${R[i3.rsync.bps]}")" "≥ 90% of 1gbit (125 MB/s)" "$(ok ge "$us" 90) ${us}%"
	row "3. Install v2, 1gbit: transfer time (1%–99%) / total (command start to exit, no fsync)" \
		"${R[i3.sim.xfer]} s / ${R[i3.sim.total]} s" "${R[i3.rsync.xfer]} s / ${R[i3.rsync.total]} s" \
		"$(ratio "${R[i3.sim.total]}" "${R[i3.rsync.total]}") (total)" "—" "—"
	row "3. Install v2, 1gbit: busy CPUs (machine, of $(nproc)) during the transfer window" \
		"${R[i3.sim.cpu]}" "${R[i3.rsync.cpu]}" "—" "—" "—"
	row "3. Install v2, 1gbit: client CPU user+sys / peak RSS (whole command)" \
		"$(awk -v u="${R[i3.sim.user]}" -v s="${R[i3.sim.sys]}" 'BEGIN { printf "%.2f s", u + s }') / $(kb "${R[i3.sim.maxrss]}")" \
		"$(awk -v u="${R[i3.rsync.user]}" -v s="${R[i3.rsync.sys]}" 'BEGIN { printf "%.2f s", u + s }') / $(kb "${R[i3.rsync.maxrss]}")" \
		"—" "—" "—"
	row "4. 8 nodes install v2, 200mbit server uplink: uplink utilization, busy period (1%–99%)" \
		"${R[f4.sim.util]}% (${R[f4.sim.util99]}%)" "${R[f4.rsync.util]}% (${R[f4.rsync.util99]}%)" \
		"$(ratio "${R[f4.sim.util]}" "${R[f4.rsync.util]}")" "≥ 90% of 25 MB/s" "$(ok ge "${R[f4.sim.util]}" 90) ${R[f4.sim.util]}%"
	row "4. 8 nodes: server tx bytes / busy period / time until all 8 done" \
		"$(bf "${R[f4.sim.bytes]}") / ${R[f4.sim.busy]} s / ${R[f4.sim.t]} s" \
		"$(bf "${R[f4.rsync.bytes]}") / ${R[f4.rsync.busy]} s / ${R[f4.rsync.t]} s" \
		"$(ratio "${R[f4.sim.t]}" "${R[f4.rsync.t]}") (time)" "—" "—"
	row "4. 8 nodes: server peak RSS" \
		"$(kb "${R[f4.sim.hwm]}") (VmHWM of sim serve)" \
		"$(kb "${R[f4.rsync.rss]}") (sampled peak of the summed RSS of the daemon + its children)" \
		"$(ratio "${R[f4.sim.hwm]}" "${R[f4.rsync.rss]}")" "< 200 MB" "$(ok le "${R[f4.sim.hwm]}" 199999) $(kb "${R[f4.sim.hwm]}")"
	row "4. 8 nodes: server CPU user+sys / busy CPUs (machine, of $(nproc)) in the busy period" \
		"${R[f4.sim.cpu]} s / ${R[f4.sim.cpuall]}" "${R[f4.rsync.cpu]} s (daemon + reaped children) / ${R[f4.rsync.cpuall]}" "—" "—" "—"
	echo
	echo "Lab: testdata/lab.sh (veth + bridge in network namespaces, tc tbf shaping; 1-2: unshaped, 3: 1gbit both ends, 4: server 200mbit, nodes 1gbit)."
	echo "Bytes: eth0 counters (GSO packets counted once; TCP/IP overhead of data segments mostly not in them); KB/MB are decimal."
	echo "sim: $SIM (sha256 $(sha256sum "$SIM" | cut -c1-12), built $(date -u -r "$SIM" '+%F %T') UTC; repo HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), rsync $(rsync --version | awk 'NR == 1 { print $3 }'), $(nproc) CPUs, $(date -u +%F)."
	echo "Whole run: $(secs "$START" "$END") s."
	for u in u23 u12; do
		[ "${R[$u.rs.stale]:-0}" -gt 0 ] || continue
		echo "rsync v${u:1:1}→v${u:2:1} result was NOT exact: ${R[$u.rs.stale]} entries still differed (${R[$u.rs.stalelist]% }; same size and mtime, other content, which rsync's quick check skips). With -c added: node rx+tx $(bf "${R[$u.rsc.node]}"), server tx $(bf "${R[$u.rsc.srv]}"), ${R[$u.rsc.t]} s."
	done
	echo "sim results were verified exact (sim diff against the commit: no difference) for the updates and the install."
	if [ "${#INTERFERENCE[@]}" -gt 0 ]; then
		echo "WARNING: bench/bench.sh was running during: ${INTERFERENCE[*]} (timings unreliable)."
	fi
} >"$W/table.md"
mkdir -p "$(dirname "$OUT")"
cp "$W/table.md" "$OUT"
cat "$W/table.md"
log "done: $OUT"
