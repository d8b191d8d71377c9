#!/usr/bin/env bash
# bench/btbench.sh [--seal] [OUTFILE] — BitTorrent vs HTTP vs "the SystemImager way",
# in the network lab of testdata/lab.sh with every link shaped to 100 Mbit
# (server uplink and each node). Prints one markdown table (stdout and
# OUTFILE, default bench/btresults.md); progress on stderr.
#
#   1. install v2 on N = 1, 4, 8, 16 nodes at once, sim over HTTP and over
#      BitTorrent: wall time from start to the last node done (checkout
#      included), server bytes sent. Targets: BitTorrent at N=16 within 1.3x
#      its N=1 time, and at least 2x faster than HTTP at N=16.
#   2. the SystemImager way on the same lab: tar + zstd -3 of the image, a
#      .torrent by mktorrent (1 MiB pieces), opentracker, aria2c seeding on
#      the server and downloading on the nodes, then zstd -d | tar -x:
#      regeneration time after the 2-file change v2 -> v3 (new tarball and
#      torrent), bytes that update moves per node (the whole tarball), and
#      install time for N = 1 and 16.
#   3. sim's update v2 -> v3 on 16 nodes over BitTorrent: wire bytes per
#      node and server bytes sent (kilobytes, not a tarball).
#
# Every sim checkout is compared with its source (sim diff REF DIR must print
# nothing). Nodes run with --no-sync and --seed-time 0 (a node leaves the
# swarm as soon as it is done: conservative for BitTorrent). sim serve runs
# with --bt-peer-rate $BTBENCH_PEER_RATE (default 0: no cap on what the
# origin sends one peer).
#
# With --seal (OUTFILE default bench/btsealresults.md) it measures instead
# what encrypting the swarm costs: the server behind --read-token (nodes
# fetch with a read token), v2 installed on N = BTBENCH_SEAL_NS ("1 16")
# nodes over BitTorrent with --bt-seal off (plain payloads) and on (every
# frame sealed with AES-256-GCM), the same tracker-less swarm otherwise:
# wall time, slowest transfer, CPU seconds of all nodes and of the server,
# and the server's time to derive the torrent.
#
# With --super (OUTFILE default bench/btsuperresults.md) it measures what
# super-seeding (sim serve --bt-super-seed, BEP 16) changes: v2 installed
# on N = BTBENCH_SUPER_NS ("1 16") nodes over BitTorrent from an origin
# seeding plainly and from one super-seeding, alternated
# BTBENCH_SUPER_REPS (2) times in the same run: wall time to the last
# node, slowest transfer, server bytes sent (and in payloads: the torrent's
# size), node CPU.
#
# Environment: SIM (default ./bin/sim), SIM_CORPUS (/var/cache/sim/corpus),
# BTBENCH_DIR (/var/tmp/sim-btbench, wiped), BTBENCH_LAB (simbtbench: the
# lab's name), BTBENCH_NODES (16), BTBENCH_NS ("1 4 8 16").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SEAL=0 SUPER=0
if [ "${1:-}" = "--seal" ]; then SEAL=1; shift; fi
if [ "${1:-}" = "--super" ]; then SUPER=1; shift; fi
OUT=${1:-$ROOT/bench/btresults.md}
[ "$SEAL" = 0 ] || OUT=${1:-$ROOT/bench/btsealresults.md}
[ "$SUPER" = 0 ] || OUT=${1:-$ROOT/bench/btsuperresults.md}
SIM=$(readlink -f "${SIM:-./bin/sim}")
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
W=${BTBENCH_DIR:-/var/tmp/sim-btbench}
NODES=${BTBENCH_NODES:-16}
NS=${BTBENCH_NS:-1 4 8 16}
PEER_RATE=${BTBENCH_PEER_RATE:-0}
LAB=$ROOT/testdata/lab.sh
L=${BTBENCH_LAB:-simbtbench}
SRV=198.18.0.1
URL=http://$SRV:7480
RATE=100mbit

exec {ERRFD}>&2
log() { printf '[btbench %s] %s\n' "$(date +%T)" "$*" >&"$ERRFD"; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"
case $W in /?*) ;; *) die "BTBENCH_DIR must be an absolute path" ;; esac
for v in v2 v3; do [ -f "$CORPUS/$v.stamp" ] || die "no corpus $CORPUS/$v (make corpus)"; done
[ "$SEAL" = 1 ] || [ "$SUPER" = 1 ] || for t in mktorrent opentracker aria2c zstd; do command -v $t >/dev/null || die "$t missing (bash bench/deps.sh installs it; make bench runs it)"; done
[ -x "$SIM" ] || die "no sim binary at $SIM (make build)"

# Processes started in the lab (through lab.sh exec) are found by their
# command line: killing the wrapper would leave them running. Every
# pattern names this run's directory $W, so no other bench's processes
# (another lab on the same addresses) match.
stop() { pkill -f -- "$1" 2>/dev/null || return 0; for _ in $(seq 50); do pgrep -f -- "$1" >/dev/null || return 0; sleep 0.1; done; pkill -9 -f -- "$1"; }
SERVE="--store $W/srv serve"
cleanup() {
	set +e
	stop "$SERVE"
	stop "opentracker -f $W"
	stop "aria2c .*--dir=$W"
	bash "$LAB" down --name $L >/dev/null 2>&1
	umount "$W" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
umount "$W" 2>/dev/null || true
rm -rf "$W"
mkdir -p "$W"
# Stores and checkouts live on a tmpfs: this VM's ext4 creates inodes very
# slowly right after a big deletion, which would time the disk, not the
# transports (every tool here writes to the same tmpfs).
mount -t tmpfs -o size=12g tmpfs "$W"
bash "$LAB" down --name $L >/dev/null 2>&1 || true
bash "$LAB" up --name $L --nodes "$NODES" --server-rate $RATE --node-rate $RATE >/dev/null
X() { bash "$LAB" exec --name $L "$@"; }
txsrv() { bash "$LAB" bytes --name $L srv | awk '{print $2}'; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
mb() { awk -v b="$1" 'BEGIN{printf "%.1f MB", b/1e6}'; }

log "server store: commit v2, v3"
S="$SIM --store $W/srv"
$S init >/dev/null
for v in v2 v3; do $S commit "$CORPUS/$v" --image deb -m $v >/dev/null; $S tag $v deb; done
# TOKEN: the nodes' --token-file (the --seal runs read behind a token).
TOKEN=()
if [ "$SEAL" = 0 ] && [ "$SUPER" = 0 ]; then
	X srv -- $SIM --store "$W/srv" serve --listen $SRV:7480 --bt-listen $SRV:6881 --bt-peer-rate "$PEER_RATE" 2>"$W/serve.log" &
	for i in $(seq 100); do X n1 -- bash -c "exec 3<>/dev/tcp/$SRV/7480" 2>/dev/null && break; sleep 0.1; done
fi

# run_sim N TRANSPORT REF FRESH: all N nodes check REF out at once; prints
# "seconds server_tx_bytes node_wire_bytes_of_n1".
run_sim() {
	local n=$1 tr=$2 ref=$3 fresh=$4
	if [ "$fresh" = 1 ]; then for i in $(seq "$n"); do rm -rf "$W/n$i"; done; fi
	sync; cat "$W"/srv/packs/*/* >/dev/null
	local tx0 t0 pids=() i
	rm -f "$W"/n*."$tr.$ref".json "$W"/n*.cpu # a run with fewer nodes must not read a bigger one's
	tx0=$(txsrv); t0=$(now)
	for i in $(seq "$n"); do
		X n$i -- /usr/bin/env time -f "%U %S" -o "$W/n$i.cpu" $SIM --store "$W/n$i/store" checkout --from $URL --transport "$tr" \
			"${TOKEN[@]}" --no-sync --seed-time 0 --json "$ref" "$W/n$i/root" >"$W/n$i.$tr.$ref.json" 2>"$W/n$i.$tr.$ref.err" &
		pids+=($!)
	done
	local fail=0
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	local t1 tx1
	t1=$(now); tx1=$(txsrv)
	[ $fail = 0 ] || { tail -5 "$W"/n*."$tr.$ref".err >&2; die "a $tr checkout of $ref failed"; }
	# Every node's tree must be exactly REF.
	pids=()
	for i in $(seq "$n"); do
		X n$i -- bash -c "out=\$($SIM --store '$W/n$i/store' diff '$ref' '$W/n$i/root/'); [ -z \"\$out\" ] || { echo \"n$i differs: \$out\" | head -5; exit 1; }" & pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "a node's tree differs from $ref"; done
	local wire fetch
	wire=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("transfer",{}).get("wire_bytes",0))' "$W/n1.$tr.$ref.json")
	# The slowest node's transfer alone (checkout excluded).
	fetch=$(python3 -c 'import json,sys; print("%.1f" % max(json.load(open(f)).get("transfer",{}).get("seconds",0) for f in sys.argv[1:]))' "$W"/n*."$tr.$ref".json)
	local cpu web
	cpu=$(cat "$W"/n*.cpu | awk '{u+=$1; s+=$2} END {printf "%.1f", u+s}')
	rm -f "$W"/n*.cpu
	# Bytes all nodes took from the web seed (BitTorrent).
	web=$(python3 -c 'import json,sys; print(sum((json.load(open(f)).get("bittorrent") or {}).get("from_web_seed",0) for f in sys.argv[1:]))' "$W"/n*."$tr.$ref".json)
	echo "$(secs "$t0" "$t1") $((tx1 - tx0)) $wire $fetch $cpu $web"
}

# srvcpu: CPU seconds (user+system) the lab's sim serve has used so far.
srvcpu() {
	local pid
	pid=$(pgrep -f -- "$SERVE" | head -1)
	awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$pid/stat"
}

# ------------------------------------------- --seal: what encryption costs ---
if [ "$SEAL" = 1 ]; then
	SNS=${BTBENCH_SEAL_NS:-1 16}
	$S token add bench --role read 2>/dev/null | tail -1 >"$W/token"
	TOKEN=(--token-file "$W/token")
	declare -A ST SF SC SS SD
	for mode in off on; do
		X srv -- $SIM --store "$W/srv" serve --listen $SRV:7480 --bt-listen $SRV:6881 --read-token --bt-seal $mode 2>>"$W/serve.log" &
		for i in $(seq 100); do X n1 -- bash -c "exec 3<>/dev/tcp/$SRV/7480" 2>/dev/null && break; sleep 0.1; done
		for n in $SNS; do
			log "install v2 on $n nodes over bittorrent behind a read token, --bt-seal $mode"
			c0=$(srvcpu)
			read -r s _ _ f cpu < <(run_sim "$n" bittorrent v2 1)
			c1=$(srvcpu)
			ST[$mode.$n]=$s; SF[$mode.$n]=$f; SC[$mode.$n]=$cpu
			SS[$mode.$n]=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.1f", b-a}')
			log "  $s s (slowest transfer $f s), nodes ${SC[$mode.$n]} CPU s, server ${SS[$mode.$n]} CPU s"
		done
		SD[$mode]=$(grep -o 'derived [a-z ]*torrent [0-9a-f]* for .* in [0-9.]*m\?s' "$W/serve.log" | tail -1 | sed 's/.* in //')
		stop "$SERVE"
	done
	{
		echo "### Sealed BitTorrent (bench/btbench.sh --seal, $(date +%F), lab: server and nodes 100 Mbit, reads behind a token)"
		echo
		echo "| install v2 over BitTorrent | N | wall time | slowest transfer | CPU, all nodes | CPU, server | torrent derived in |"
		echo "|---|---|---|---|---|---|---|"
		for n in $SNS; do
			for mode in off on; do
				name=plain; [ $mode = on ] && name="sealed (AES-256-GCM per frame)"
				echo "| $name | $n | ${ST[$mode.$n]} s | ${SF[$mode.$n]} s | ${SC[$mode.$n]} s | ${SS[$mode.$n]} s | ${SD[$mode]} |"
			done
		done
		echo
		for n in $SNS; do
			echo "N=$n: sealed / plain wall time $(awk -v a="${ST[on.$n]}" -v b="${ST[off.$n]}" 'BEGIN{printf "%.2fx", a/b}'), node CPU $(awk -v a="${SC[on.$n]}" -v b="${SC[off.$n]}" 'BEGIN{printf "%.2fx", a/b}')."
		done
	} | tee "$OUT"
	exit 0
fi

# ------------------------------------------- --super: super-seeding ---
if [ "$SUPER" = 1 ]; then
	UNS=${BTBENCH_SUPER_NS:-1 16}
	REPS=${BTBENCH_SUPER_REPS:-2}
	declare -A UT UF UX UC UW UP
	# btup: payload bytes the seeder has sent peers so far (GET /v1/bt/status).
	btup() { X n1 -- curl -s "$URL/v1/bt/status" | python3 -c 'import json,sys; print(sum(t["uploaded"] for t in json.load(sys.stdin)))'; }
	for rep in $(seq "$REPS"); do
		for mode in off on; do
			flag=(--bt-super-seed=false)
			[ $mode = on ] && flag=(--bt-super-seed=true)
			X srv -- $SIM --store "$W/srv" serve --listen $SRV:7480 --bt-listen $SRV:6881 --bt-peer-rate "$PEER_RATE" "${flag[@]}" 2>>"$W/serve.log" &
			for i in $(seq 100); do X n1 -- bash -c "exec 3<>/dev/tcp/$SRV/7480" 2>/dev/null && break; sleep 0.1; done
			for n in $UNS; do
				log "run $rep: install v2 on $n nodes over bittorrent, super-seeding $mode"
				u0=$(btup)
				read -r s tx _ f cpu web < <(run_sim "$n" bittorrent v2 1)
				UT[$rep.$mode.$n]=$s; UX[$rep.$mode.$n]=$tx; UF[$rep.$mode.$n]=$f; UC[$rep.$mode.$n]=$cpu; UW[$rep.$mode.$n]=$web
				UP[$rep.$mode.$n]=$(($(btup) - u0))
				log "  $s s (slowest transfer $f s), server sent $(mb "$tx") ($(mb "$web") as web seed, $(mb "${UP[$rep.$mode.$n]}") to peers), nodes $cpu CPU s"
			done
			stop "$SERVE"
		done
	done
	PAYLOAD=$(grep -o 'derived [a-z -]*torrent [0-9a-f]* for [0-9a-f]* (base none): [0-9]* objects, [0-9]* bytes' "$W/serve.log" | head -1 | sed 's/.* objects, \([0-9]*\) bytes/\1/')
	imgs() { awk -v a="$1" -v b="$PAYLOAD" 'BEGIN{printf "%.2f", a/b}'; }
	{
		echo "### Super-seeding (bench/btbench.sh --super, $(date +%F), lab: server and nodes 100 Mbit, origin --bt-peer-rate $PEER_RATE)"
		echo
		echo "Payload of the v2 torrent: $(mb "$PAYLOAD"). Runs alternate plain and super-seeding origins, $REPS times; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
		echo
		echo "| install v2 over BitTorrent | run | N | wall time (last node) | slowest transfer | server bytes sent | in payloads | of which to peers (payload) | web seed | CPU, all nodes |"
		echo "|---|---|---|---|---|---|---|---|---|---|"
		for n in $UNS; do
			for rep in $(seq "$REPS"); do
				for mode in off on; do
					name=plain; [ $mode = on ] && name="super-seeding"
					echo "| $name | $rep | $n | ${UT[$rep.$mode.$n]} s | ${UF[$rep.$mode.$n]} s | $(mb "${UX[$rep.$mode.$n]}") | $(imgs "${UX[$rep.$mode.$n]}") | $(mb "${UP[$rep.$mode.$n]}") ($(imgs "${UP[$rep.$mode.$n]}")) | $(mb "${UW[$rep.$mode.$n]}") | ${UC[$rep.$mode.$n]} s |"
				done
			done
		done
		echo
		echo "The super-seeding origin's own account (sim serve's log, one line per run):"
		echo
		grep -o 'super-seeded [0-9a-f]* to .*' "$W/serve.log" | sed 's/^/- /'
	} | tee "$OUT"
	exit 0
fi

declare -A T TX F
for n in $NS; do
	for tr in http bittorrent; do
		log "install v2 on $n nodes over $tr"
		read -r s tx _ f _ < <(run_sim "$n" $tr v2 1)
		T[$tr.$n]=$s; TX[$tr.$n]=$tx; F[$tr.$n]=$f
		log "  $s s (slowest transfer $f s), server sent $(mb "$tx")"
	done
done
log "update v2 -> v3 on $NODES nodes over bittorrent"
read -r upd_s upd_tx upd_wire _ _ < <(run_sim "$NODES" bittorrent v3 0)
log "  $upd_s s, server sent $upd_tx B, n1 moved $upd_wire B"
stop "$SERVE"

# The same BitTorrent installs with the origin capped per peer (Kraken's
# lesson): does making nodes share beat letting the origin send freely?
CAP=${BTBENCH_CAP:-40Mbit}
serve() {
	X srv -- $SIM --store "$W/srv" serve --listen $SRV:7480 --bt-listen $SRV:6881 --bt-peer-rate "$1" 2>>"$W/serve.log" &
	for i in $(seq 100); do X n1 -- bash -c "exec 3<>/dev/tcp/$SRV/7480" 2>/dev/null && break; sleep 0.1; done
}
serve "$CAP"
for n in 1 "$NODES"; do
	log "install v2 on $n nodes over bittorrent, origin capped at $CAP per peer"
	read -r s tx _ f _ < <(run_sim "$n" bittorrent v2 1)
	T[cap.$n]=$s; TX[cap.$n]=$tx; F[cap.$n]=$f
	log "  $s s, server sent $(mb "$tx")"
done
stop "$SERVE"

# ------------------------------------------------ the SystemImager way ---
log "SystemImager way: tarball + mktorrent + opentracker + aria2c"
mkdir -p "$W/si"
# Debian's opentracker runs in private mode: every torrent's info hash goes
# into its whitelist (part of regenerating, as on a SystemImager server).
printf 'listen.tcp_udp %s:6969\naccess.whitelist %s\n' $SRV "$W/si/whitelist.txt" >"$W/si/opentracker.conf"
: >"$W/si/whitelist.txt"
mk() { # mk VERSION: regenerate the tarball and the torrent, whitelist it
	tar -C "$CORPUS/$1" --numeric-owner --xattrs --acls -cf - . | zstd -q -3 -T0 -o "$W/si/$1.tar.zst" -f
	rm -f "$W/si/$1.torrent"
	mktorrent -l 20 -a "http://$SRV:6969/announce" -o "$W/si/$1.torrent" "$W/si/$1.tar.zst" >/dev/null
	aria2c -S "$W/si/$1.torrent" | awk '/Info Hash/ {print $3}' >>"$W/si/whitelist.txt"
	pkill -HUP -f "opentracker -f $W" || true
}
tar -C "$CORPUS/v2" -cf - . >/dev/null
t0=$(now); mk v2; t1=$(now); si_gen2=$(secs "$t0" "$t1")
tar -C "$CORPUS/v3" -cf - . >/dev/null
t0=$(now); mk v3; t1=$(now); si_gen3=$(secs "$t0" "$t1")
TB2=$(stat -c %s "$W/si/v2.tar.zst"); TB3=$(stat -c %s "$W/si/v3.tar.zst")
X srv -- opentracker -f "$W/si/opentracker.conf" >"$W/si/tracker.log" 2>&1 &
sleep 0.5
ARIA=(aria2c -q --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=true
	--file-allocation=none --allow-overwrite=true --check-integrity=false --bt-stop-timeout=0)
seed() { # seed VERSION: aria2c seeds the tarball from the server
	stop "aria2c .*--dir=$W/si "
	X srv -- "${ARIA[@]}" -V --seed-ratio=0.0 --seed-time=100000 --listen-port=6890 --dir="$W/si" "$W/si/$1.torrent" >"$W/si/seed.log" 2>&1 &
	sleep 3
}
run_si() { # run_si N VERSION: N nodes download and unpack; prints "seconds server_tx"
	local n=$1 v=$2 pids=() i tx0 t0
	for i in $(seq "$n"); do rm -rf "$W/si/n$i"; mkdir -p "$W/si/n$i/root"; done
	tx0=$(txsrv); t0=$(now)
	for i in $(seq "$n"); do
		X n$i -- bash -c "${ARIA[*]} --seed-time=0 --listen-port=6881 --dir='$W/si/n$i' '$W/si/$v.torrent' && zstd -q -d -c '$W/si/n$i/$v.tar.zst' | tar -C '$W/si/n$i/root' -xf -" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "aria2c install failed"; done
	echo "$(secs "$t0" "$(now)") $(($(txsrv) - tx0))"
}
seed v2
declare -A SI SI_TX
for n in 1 "$NODES"; do
	log "SystemImager way: install v2 on $n nodes"
	read -r s tx < <(run_si "$n" v2)
	SI[$n]=$s; SI_TX[$n]=$tx
	log "  $s s, server sent $(mb "$tx")"
done
seed v3
log "SystemImager way: update to v3 on $NODES nodes (the whole tarball again)"
read -r si_upd_s si_upd_tx < <(run_si "$NODES" v3)

# ----------------------------------------------------------------- table ---
{
	echo "### BitTorrent (bench/btbench.sh, $(date +%F), lab: server and nodes 100 Mbit)"
	echo
	echo "| install v2 | N=1 | N=4 | N=8 | N=16 | N=16 / N=1 |"
	echo "|---|---|---|---|---|---|"
	for tr in bittorrent http; do
		row="| sim $tr |"
		for n in 1 4 8 16; do row+=" ${T[$tr.$n]:-–} s |"; done
		row+=" $(awk -v a="${T[$tr.16]:-0}" -v b="${T[$tr.1]:-1}" 'BEGIN{printf "%.2fx", a/b}') |"
		echo "$row"
	done
	for tr in bittorrent http; do
		row="| sim $tr, transfer only (slowest node) |"
		for n in 1 4 8 16; do row+=" ${F[$tr.$n]:-–} s |"; done
		row+=" $(awk -v a="${F[$tr.16]:-0}" -v b="${F[$tr.1]:-1}" 'BEGIN{printf "%.2fx", a/b}') |"
		echo "$row"
	done
	echo "| sim bittorrent, origin capped at $CAP per peer | ${T[cap.1]} s | – | – | ${T[cap.$NODES]} s | $(awk -v a="${T[cap.$NODES]}" -v b="${T[cap.1]}" 'BEGIN{printf "%.2fx", a/b}') |"
	echo "| SystemImager way (aria2c + tarball) | ${SI[1]} s | – | – | ${SI[$NODES]} s | $(awk -v a="${SI[$NODES]}" -v b="${SI[1]}" 'BEGIN{printf "%.2fx", a/b}') |"
	echo
	echo "HTTP / BitTorrent at N=16: $(awk -v a="${T[http.16]:-0}" -v b="${T[bittorrent.16]:-1}" 'BEGIN{printf "%.2fx", a/b}') (target >= 2x); BitTorrent N=16 / N=1: $(awk -v a="${T[bittorrent.16]:-0}" -v b="${T[bittorrent.1]:-1}" 'BEGIN{printf "%.2fx", a/b}') (target <= 1.3x)."
	echo "Server bytes sent for v2 to 16 nodes: BitTorrent $(mb "${TX[bittorrent.16]:-0}") (capped origin: $(mb "${TX[cap.$NODES]:-0}")), HTTP $(mb "${TX[http.16]:-0}"), SystemImager way $(mb "${SI_TX[$NODES]:-0}")."
	echo
	echo "| update v2 -> v3 (2 files changed), $NODES nodes | sim over BitTorrent | SystemImager way |"
	echo "|---|---|---|"
	echo "| regenerate after the change | nothing (torrents are derived on request) | ${si_gen3} s (tar + zstd + mktorrent; v2: ${si_gen2} s) |"
	echo "| bytes moved per node | $upd_wire B | $(mb "$TB3") (the whole tarball; v2's is $(mb "$TB2")) |"
	echo "| server bytes sent, all $NODES nodes | $upd_tx B | $(mb "$si_upd_tx") |"
	echo "| time | ${upd_s} s | ${si_upd_s} s |"
} | tee "$OUT"
