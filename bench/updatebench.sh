#!/usr/bin/env bash
# bench/updatebench.sh [OUTFILE] — day 2: updating a running fleet. sim's
# rollout (sim serve, one sim agent per node, nodes' roots with their stores
# inside) against SystemImager's way (an rsync daemon on the server, every
# node running `rsync -aHAX --numeric-ids --delete --exclude-from=...` at
# once: what si_pushupdate -> si_updateclient does), in the network lab of
# testdata/lab.sh, same run. Prints ONE markdown table (stdout and OUTFILE,
# default bench/updateresults.md); progress on stderr.
#
#   1. 8 and 16 nodes, updates v2 -> v3 and v1 -> v2: wall time until the
#      last node is done (sim: `rollout start` to the rollout done, health
#      checks included; rsync: until the last client exits), bytes the
#      server sent (its eth0), CPU time of the nodes (sim: the agents'
#      utime+stime; rsync: the clients' user+sys)
#      targets: v2 -> v3 on 16 nodes under 2 s and under 100 KB of server bytes
#   2. `sim rollout plan` accuracy: predicted bytes per node against what
#      each node reported after the rollout (target within 5%)
#   3. drift scan of a v2 node, warm: `sim drift --root` (median of 5)
#      beside `rsync -n -c` against the image tree (target under 0.3 s)
#
# Lab: server and nodes on 1gbit links. Both ways keep the same paths
# (sim's preserved paths; rsync gets them as its exclude file). The roots
# and stores live in UPDATEBENCH_DIR (default /var/tmp/sim-updatebench, wiped
# at start and end; UPDATEBENCH_KEEP=1 keeps it). SIM: the sim binary
# (default ./bin/sim); SIM_CORPUS: the corpus. UPDATEBENCH_UPDATES picks
# the updates (default "v2:v3 v1:v2"; "v2:v3" alone takes ~2 minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-$ROOT/bench/updateresults.md}
SIM=${SIM:-./bin/sim}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${UPDATEBENCH_DIR:-/var/tmp/sim-updatebench}
LAB=$ROOT/testdata/lab.sh
L=simupdbench
SRV_IP=198.18.0.1
SIM_PORT=7480
RSYNC_PORT=8730
URL=http://$SRV_IP:$SIM_PORT
NMAX=16

exec {ERRFD}>&2
log() { printf '[updatebench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"
case $W in /?*) ;; *) die "UPDATEBENCH_DIR must be an absolute path other than /" ;; esac
W=${W%/}
need=()
for t in rsync:rsync python3:python3 /usr/bin/time:time ip:iproute2; do
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

# ------------------------------------------------------ cleanup machinery ---
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
	if [ "${UPDATEBENCH_KEEP:-0}" = 1 ]; then log "kept $W (logs in $W/log)"; else wipe || true; fi
	[ "$rc" -eq 0 ] || log "FAILED (exit $rc)$([ "${UPDATEBENCH_KEEP:-0}" = 1 ] || echo '; UPDATEBENCH_KEEP=1 keeps the logs')"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", b - a }'; }
lx() { "$LAB" exec --name "$L" "$@"; }
srv_tx() { "$LAB" bytes --name "$L" srv | awk '{ print $2 }'; }
hb() {
	awk -v b="$1" 'BEGIN { if (b < 1000) printf "%d B", b; else if (b < 1e6) printf "%.1f KB", b / 1e3;
		else if (b < 1e9) printf "%.1f MB", b / 1e6; else printf "%.2f GB", b / 1e9 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
mark() { if "$@"; then echo "✅"; else echo "❌"; fi; }
nodes() { seq -f "n%g" 1 "$1"; } # n1..nN
S() { "$SIM" --store "$W/srv" "$@"; }

wait_port() {
	local i
	for ((i = 0; i < 100; i++)); do
		lx n1 -- bash -c "exec 3<>/dev/tcp/$SRV_IP/$1" 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on $SRV_IP:$1 in the lab"
}

# CPU seconds (utime+stime) of the given pids.
cpu_of() {
	local p t=0 f
	for p in "$@"; do
		f=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
		t=$((t + f))
	done
	awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz }'
}

# ================================================================== setup ===
"$ROOT/testdata/mkcorpus.sh" "$CORPUS" >/dev/null || die "mkcorpus.sh failed"
wipe
mkdir -p "$W"/{log,sim,rs}
log "scratch $W, sim $SIM, corpus $CORPUS"

# What both ways keep on a node (sim's preserved paths, as rsync excludes).
cat >"$W/exclude" <<'EOF'
/proc/*
/sys/*
/dev/*
/run/*
/tmp/*
/var/tmp/*
/var/log/*
/var/spool/*
/var/lib/sim
/var/lib/dhcp/*
/var/lib/systemd/random-seed
/etc/adjtime
/etc/machine-id
/etc/ssh/ssh_host_*
/etc/fstab
/etc/hostname
/etc/hosts
/etc/systemd/network/10-sim.network
/boot/grub
/boot/efi
/lost+found
EOF
cat >"$W/rsyncd.conf" <<EOF
address = $SRV_IP
port = $RSYNC_PORT
uid = root
gid = root
use chroot = no
numeric ids = yes
reverse lookup = no
read only = yes
log file = $W/log/rsyncd.log
[v1]
	path = $CORPUS/v1
[v2]
	path = $CORPUS/v2
[v3]
	path = $CORPUS/v3
EOF

log "server store: v1, v2, v3; $NMAX nodes in group compute"
S init >"$W/log/store.log" 2>&1
for v in v1 v2 v3; do
	S commit "$CORPUS/$v" --image deb -m "$v" >>"$W/log/store.log" 2>&1 || die "commit $v failed"
	S tag "$v" deb >>"$W/log/store.log" 2>&1
done
S group add compute --image deb >>"$W/log/store.log" 2>&1
for n in $(nodes $NMAX); do S node add "$n" --group compute >>"$W/log/store.log" 2>&1; done

"$LAB" down --name "$L" 2>/dev/null || true
"$LAB" up --name "$L" --nodes $NMAX --server-rate 1gbit --node-rate 1gbit 2>>"$W/log/lab.log" || die "lab up failed"
lx srv -- "$SIM" --store "$W/srv" serve --listen "$SRV_IP:$SIM_PORT" 2>>"$W/log/serve.log" &
PIDS+=($!)
lx srv -- rsync --daemon --no-detach --config="$W/rsyncd.conf" 2>>"$W/log/rsyncd.log" &
PIDS+=($!)
wait_port $SIM_PORT
wait_port $RSYNC_PORT

# A set of N sim nodes at FROM, fresh (their stores hold FROM only, as
# after an install): roots with their stores inside, identity, installed.json.
setup_node() { # set n from
	local R=$W/sim/$1/$2 id
	id=$(S show "$3" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
	"$LAB" exec --name "$L" "$2" -- "$SIM" --store "$R/var/lib/sim" checkout --from "$URL" "$3" "$R" --no-sync >>"$W/log/setup.log" 2>&1 || return 1
	echo "$2" >"$R/etc/hostname"
	head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$R/etc/machine-id"
	printf '{"node":"%s","image":"deb","commit":"%s","server":"%s","hostname":"%s"}\n' "$2" "$id" "$URL" "$2" >"$R/var/lib/sim/installed.json"
	# The node's own token (agent requests need it), as an install leaves it.
	(umask 077 && S token add "node-$1-$2" --role node --node "$2" 2>>"$W/log/setup.log" | tail -1 >"$R/var/lib/sim/token") || return 1
	[ -s "$R/var/lib/sim/token" ] || return 1
}
make_set() { # set N from
	local n p pids=()
	log "set $1: $2 fresh sim nodes at $3"
	for n in $(nodes "$2"); do
		setup_node "$1" "$n" "$3" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "setting up a node of set $1 failed (see $W/log/setup.log)"; done
}
AGENT=()
start_agents() { # set N
	local n i up
	AGENT=()
	for n in $(nodes "$2"); do
		# "$LAB" exec execs ip netns exec, which execs sim: $! is the agent.
		"$LAB" exec --name "$L" "$n" -- "$SIM" --store "$W/sim/$1/$n/var/lib/sim" agent --root "$W/sim/$1/$n" --drift-every 0 2>>"$W/log/agent-$1-$n.log" &
		AGENT+=($!)
		PIDS+=($!)
	done
	for ((i = 0; i < 300; i++)); do
		up=$(S nodes --json | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["last_seen"] and n["state"] == "idle"))')
		[ "$up" -ge "$2" ] && break
		sleep 0.2
	done
	[ "$up" -ge "$2" ] || die "only $up of $2 agents report"
}
stop_agents() {
	local p
	for p in "${AGENT[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${AGENT[@]}"; do wait "$p" 2>/dev/null || true; forget "$p"; done
	AGENT=()
}
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

log "$NMAX rsync nodes at v2"
RS=()
for n in $(nodes $NMAX); do
	"$LAB" exec --name "$L" "$n" -- rsync -aHAX --numeric-ids "rsync://$SRV_IP:$RSYNC_PORT/v2/" "$W/rs/$n/" >>"$W/log/setup.log" 2>&1 &
	RS+=($!)
done
for p in "${RS[@]}"; do wait "$p" || die "rsync setup failed (see $W/log/setup.log)"; done

# ================================================================ measure ===
# sim: a rollout of TO to n1..nN in one wave; echo "seconds server_bytes cpu plan_err_pct"
sim_rollout() { # N TO [untimed]
	local N=$1 to=$2 list="n1-n$1" t0 t1 tx0 tx1 c0 c1 id
	S rollout plan "$to" --nodes "$list" --json >"$W/log/plan-$to-$N.json"
	sync
	c0=$(cpu_of "${AGENT[@]:0:$N}")
	tx0=$(srv_tx)
	t0=$(now)
	id=$(S rollout start "$to" --nodes "$list" --canary 0 2>>"$W/log/rollout.log" | tail -1)
	S rollout status "$id" --watch >/dev/null 2>>"$W/log/rollout.log"
	t1=$(now)
	sleep 0.3 # the last answers' ACKs
	tx1=$(srv_tx)
	c1=$(cpu_of "${AGENT[@]:0:$N}")
	S rollout status "$id" --json >"$W/log/status-$id.json"
	python3 - "$W/log/status-$id.json" "$N" <<'EOF' || die "rollout $id did not bring every node to its commit (see $W/log/status-$id.json)"
import json, sys
s = json.load(open(sys.argv[1]))
bad = [n for n, v in s["nodes"].items() if v["state"] != "done"]
sys.exit(1 if s["state"] != "done" or bad or len(s["nodes"]) != int(sys.argv[2]) else 0)
EOF
	local err
	err=$(python3 - "$W/log/plan-$to-$N.json" "$W/log/status-$id.json" <<'EOF'
import json, sys
p, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
worst = 0.0
for n, v in s["nodes"].items():
    pred, got = p["nodes"][n]["bytes"], v["bytes"]
    worst = max(worst, abs(pred - got) / got * 100 if got else (0 if pred == 0 else 100))
print("%.2f" % worst)
EOF
)
	echo "$(secs "$t0" "$t1") $((tx1 - tx0)) $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }') $err"
}
# rsync: every node at once; echo "seconds server_bytes cpu"
rsync_update() { # N TO
	local N=$1 to=$2 t0 t1 tx0 tx1 n pids=()
	sync
	tx0=$(srv_tx)
	t0=$(now)
	for n in $(nodes "$N"); do
		"$LAB" exec --name "$L" "$n" -- /usr/bin/time -f "%U %S" -o "$W/log/rs-time-$n" \
			rsync -aHAX --numeric-ids --delete --exclude-from="$W/exclude" "rsync://$SRV_IP:$RSYNC_PORT/$to/" "$W/rs/$n/" >>"$W/log/rsync.log" 2>&1 &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "an rsync client failed (see $W/log/rsync.log)"; done
	t1=$(now)
	sleep 0.3
	tx1=$(srv_tx)
	echo "$(secs "$t0" "$t1") $((tx1 - tx0)) $(for n in $(nodes "$N"); do cat "$W/log/rs-time-$n"; done | awk '{ c += $1 + $2 } END { printf "%.2f", c }')"
}
rsync_to() { # N TO, untimed
	local n p pids=()
	for n in $(nodes "$1"); do
		"$LAB" exec --name "$L" "$n" -- rsync -aHAX --numeric-ids --delete --exclude-from="$W/exclude" "rsync://$SRV_IP:$RSYNC_PORT/$2/" "$W/rs/$n/" >>"$W/log/rsync.log" 2>&1 &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "rsync to $2 failed (see $W/log/rsync.log)"; done
}

UPDATES=()
for u in ${UPDATEBENCH_UPDATES:-v2:v3 v1:v2}; do
	case $u in v[123]:v[123]) UPDATES+=("${u%:*} ${u#*:}") ;; *) die "UPDATEBENCH_UPDATES: $u: want FROM:TO of v1, v2, v3" ;; esac
done
declare -A R
for upd in "${UPDATES[@]}"; do
	set -- $upd
	from=$1 to=$2
	for N in 8 16; do
		set_=$from-$N
		make_set "$set_" "$N" "$from"
		if [ "$from" = v2 ] && [ "$N" = 8 ]; then
			log "drift scan of a v2 node (warm), beside rsync -n -c"
			R1=$W/sim/$set_/n1
			"$SIM" --store "$R1/var/lib/sim" drift --root "$R1" >/dev/null 2>>"$W/log/drift.log" || die "drift failed (see $W/log/drift.log)"
			DRIFT=$(for i in 1 2 3 4 5; do
				t0=$(now)
				"$SIM" --store "$R1/var/lib/sim" drift --root "$R1" --json >"$W/log/drift.json" 2>>"$W/log/drift.log"
				secs "$t0" "$(now)"
			done | sort -n | sed -n 3p)
			DRIFTN=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(len(v[k]) for v in d.values() for k in ("added","modified","removed","metadata")))' "$W/log/drift.json")
			rsync -nac --delete --exclude-from="$W/exclude" "$CORPUS/v2/" "$R1/" >/dev/null 2>&1 || true # warm
			RSN=$(for i in 1 2 3; do
				t0=$(now)
				rsync -nac --delete --exclude-from="$W/exclude" "$CORPUS/v2/" "$R1/" >/dev/null 2>&1 || true
				secs "$t0" "$(now)"
			done | sort -n | sed -n 2p)
			log "  drift: sim ${DRIFT} s ($DRIFTN paths), rsync -n -c ${RSN} s"
		fi
		start_agents "$set_" "$N"
		log "update $from -> $to on $N nodes: sim"
		R[sim,$from,$N]=$(sim_rollout "$N" "$to")
		log "  sim: ${R[sim,$from,$N]}"
		stop_agents
		rm -rf --one-file-system "${W:?}/sim/$set_"
		rsync_to $NMAX "$from"
		log "update $from -> $to on $N nodes: rsync"
		R[rs,$from,$N]=$(rsync_update "$N" "$to")
		log "  rsync: ${R[rs,$from,$N]}"
	done
done

# ================================================================= report ===
{
	echo "| update | nodes | sim: time to the last node | rsync | sim / rsync | sim: server bytes | rsync | sim / rsync | sim: node CPU | rsync | plan error (max per node) |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|"
	for upd in "${UPDATES[@]}"; do
		set -- $upd
		for N in 8 16; do
			read -r st sb sc se <<<"${R[sim,$1,$N]}"
			read -r rt rb rc <<<"${R[rs,$1,$N]}"
			tgt=""
			if [ "$1" = v2 ] && [ "$N" = 16 ]; then
				tgt=" $(mark lt "$st" 2) <2 s, $(mark lt "$sb" 100000) <100 KB"
			fi
			echo "| $1→$2 | $N | ${st} s | ${rt} s | $(ratio "$st" "$rt") | $(hb "$sb") | $(hb "$rb") | $(ratio "$sb" "$rb") | ${sc} s | ${rc} s | ${se}% $(mark lt "$se" 5)${tgt} |"
		done
	done
	if [ -n "${DRIFT:-}" ]; then
		echo
		echo "| drift scan of a v2 node, warm | sim drift --root | rsync -n -c | sim / rsync |"
		echo "|---|---|---|---|"
		echo "| time (median) | ${DRIFT} s ($DRIFTN paths differ) $(mark lt "$DRIFT" 0.3) | ${RSN} s | $(ratio "$DRIFT" "$RSN") |"
	fi
	echo
	echo "Load average during the run: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores."
} | tee "$OUT"
