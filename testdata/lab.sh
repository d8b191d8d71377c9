#!/usr/bin/env bash
# testdata/lab.sh — a throw-away network lab in Linux network namespaces, for
# integration tests and benchmarks of sim's network transports (HTTP now,
# BitTorrent and IP multicast later). Needs root.
#
# Usage:
#   lab.sh up    [--name NAME] [--nodes N] [--server-rate RATE] [--node-rate RATE]
#                [--loss PCT] [--slow-node I --slow-rate RATE]
#   lab.sh down  [--name NAME]
#   lab.sh exec  [--name NAME] HOST -- CMD [ARGS...]   run CMD inside HOST
#   lab.sh addr  [--name NAME] HOST                     print HOST's IPv4 address
#   lab.sh bytes [--name NAME] HOST                     print "rx_bytes tx_bytes" of HOST's eth0
#   lab.sh loss  [--name NAME] HOST PCT                 random drop on HOST's ingress (0 removes)
#   lab.sh rate  [--name NAME] HOST RATE                reshape HOST's link (both directions) to RATE
#   lab.sh list                                         names of the labs that exist
#
#   HOST is srv or n1..nN. NAME defaults to simlab ([A-Za-z0-9_-], at most 24
#   chars, not ending in -sw/-srv/-nDIGITS). N defaults to 3 (0..200).
#   RATE is a tc rate: 100mbit, 1gbit, 500kbit, 12mbps (bytes/s), a bare number
#   is bit/s. PCT is 0..100, up to two decimals (0.5 = one packet in 200).
#
# Topology: a star. Namespace NAME-sw holds bridge br0 and is the switch; its
# ports are s0 (to the server) and n1..nN (to the nodes). Namespaces NAME-srv
# and NAME-nI are the hosts, each with lo and eth0 (the other end of a veth):
#     srv  198.18.0.1/16      nI  198.18.1.I/16
# Nothing is configured in the root namespace: every veth is created with both
# ends already in lab namespaces (198.18.0.0/15 is the RFC 2544 benchmarking
# range, routed nowhere). Hosts have no default route, only the /16 and
# 224.0.0.0/4 dev eth0; IPv6 is disabled in the lab (no DAD/RS/MLD chatter in
# the byte counters). The bridge has multicast_snooping 0 and mcast_querier 0,
# so a multicast datagram reaches every port (flooded like broadcast).
#
# Shaping (tc tbf; this kernel has no netem). Each rate is applied to both
# directions of a link, modelling a full-duplex NIC of that speed:
#   --server-rate  srv:eth0 egress  (server uplink: ALL traffic from the server
#                                    to all nodes shares RATE)
#                  sw:s0 egress     (server downlink, uploads to the server)
#   --node-rate    nI:eth0 egress   (node uplink)
#                  sw:nI egress     (node downlink)
#   --slow-node I --slow-rate R     node I gets R instead of --node-rate.
#   rate HOST RATE later replaces both directions of HOST's link with RATE
#   (the same tbf), so one lab can run steps at several link speeds.
# tbf parameters (bytes; rate in bytes/s = RATE/8):
#   burst = max(rate * LAB_BURST_MS/1000, 96 KiB)     LAB_BURST_MS default 2
#   limit = burst + rate * LAB_QUEUE_MS/1000          LAB_QUEUE_MS default 20
# The 96 KiB floor keeps a whole 64 KiB GSO/TSO super-packet (plus the headers
# tbf charges per segment, ~68.5 KiB) under burst, so tbf never has to split
# it; a burst of 2 ms keeps short-term bursts small at high rates. The queue
# (limit) holds LAB_QUEUE_MS of traffic at RATE beyond the burst: a switch-port
# sized buffer, big enough for TCP to fill the link, small enough that RTT
# stays low. tbf counts L2 bytes (IP + 14-byte Ethernet header, no preamble/
# FCS), so TCP goodput is ~95.6% of RATE: 100mbit -> ~11.9 MB/s.
# Offloads (TSO/GSO) stay on: tbf charges a GSO packet for all its segments'
# bytes, so the long-run rate is exact, and turning them off costs a lot of CPU.
#
# bytes reads eth0's counters inside HOST. With GSO a 64 KiB super-packet is
# counted once with one set of headers, so a bulk TCP transfer of P bytes
# shows ~P (+0.2%), not P*1514/1448; the sender's tx also includes resends.
#
# Loss: nftables in the receiving namespace, table inet lab, input hook,
# "numgen random mod 10000 < PCT*100 drop". It drops IPv4 unicast and multicast
# delivered to the host (not ARP; not traffic merely bridged by the switch).
#
# up on an existing NAME tears it down first; a failing up tears down what it
# built. down kills every process left in the lab's namespaces (TERM, then KILL
# after 2 s) and deletes them; it succeeds on a half-built or missing lab.
# up/down print one summary line on stderr and nothing else on success.
# Installs iproute2, nftables, python3 with apt-get if missing.
set -euo pipefail

PROG=lab.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() {
	sed -n '/^# Usage:/,/one packet in 200/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

NAME=simlab
BURST_MS=${LAB_BURST_MS:-2}
QUEUE_MS=${LAB_QUEUE_MS:-20}
MAXNODES=200

# ------------------------------------------------------------------ helpers ---
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

ensure_deps() { # binaries -> apt packages, installed quietly when missing
	local -A want=([ip]=iproute2 [tc]=iproute2 [nft]=nftables [python3]=python3)
	local bin missing=()
	for bin in "${!want[@]}"; do
		command -v "$bin" >/dev/null 2>&1 || missing+=("${want[$bin]}")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "$PROG: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || die "apt-get update failed"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
		die "apt-get install ${missing[*]} failed"
}

check_name() {
	[[ $NAME =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{0,23}$ ]] ||
		die "bad lab name '$NAME' (use [A-Za-z0-9_-], at most 24 chars)"
	[[ $NAME =~ -(sw|srv|n[0-9]+)$ ]] && die "bad lab name '$NAME' (must not end in -sw, -srv or -nDIGITS)"
	return 0
}

ns_exists() { [ -e "/run/netns/$1" ]; }

# All namespaces of lab $NAME, switch first.
lab_namespaces() {
	ip netns list 2>/dev/null | awk -v p="$NAME" '
		{ n = $1; if (substr(n, 1, length(p) + 1) != p "-") next
		  s = substr(n, length(p) + 2)
		  if (s == "sw") print "0 " n; else if (s == "srv") print "1 " n
		  else if (s ~ /^n[0-9]+$/) print "2 " n }' | sort -k1,1n -k2,2V | cut -d' ' -f2
}

# HOST -> namespace, checking the host name and that the namespace exists.
host_ns() {
	local h=$1
	[[ $h == srv || $h =~ ^n([1-9][0-9]{0,2})$ ]] || die "bad host '$h' (srv or n1..n$MAXNODES)"
	ns_exists "$NAME-$h" || die "lab '$NAME' has no host '$h' (is it up? lab.sh list)"
	printf '%s\n' "$NAME-$h"
}

host_addr() {
	case $1 in
	srv) echo 198.18.0.1 ;;
	n*) echo "198.18.1.${1#n}" ;;
	esac
}

# tc rate string -> bytes per second (integer), or fail.
rate_bytes() {
	local r=${1,,} num unit
	[[ $r =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || return 1
	num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
	local mult
	case $unit in
	"" | bit) mult=0.125 ;; kbit) mult=125 ;; mbit) mult=125000 ;;
	gbit) mult=125000000 ;; tbit) mult=125000000000 ;;
	kibit) mult=128 ;; mibit) mult=131072 ;; gibit) mult=134217728 ;;
	bps) mult=1 ;; kbps) mult=1000 ;; mbps) mult=1000000 ;; gbps) mult=1000000000 ;;
	kibps) mult=1024 ;; mibps) mult=1048576 ;; gibps) mult=1073741824 ;;
	*) return 1 ;;
	esac
	awk -v n="$num" -v m="$mult" 'BEGIN { v = n * m; if (v < 1000) exit 1; printf "%d\n", v }'
}

check_rate() { rate_bytes "$1" >/dev/null || die "bad rate '$1' (e.g. 100mbit, 1gbit; at least 8kbit)"; }

# PCT -> integer parts per 10000, or fail.
pct_bp() {
	[[ $1 =~ ^([0-9]{1,3})(\.([0-9]{1,2}))?$ ]] || return 1
	local bp
	bp=$(awk -v p="$1" 'BEGIN { printf "%d\n", p * 100 + 0.5 }')
	[ "$bp" -le 10000 ] || return 1
	echo "$bp"
}

# tbf on dev $2 in namespace $1 at rate $3 (see the header for the formula).
shape() {
	local ns=$1 dev=$2 rate=$3 bps burst limit
	bps=$(rate_bytes "$rate")
	burst=$(awk -v b="$bps" -v ms="$BURST_MS" 'BEGIN { x = b * ms / 1000; if (x < 98304) x = 98304; printf "%d\n", x }')
	limit=$(awk -v b="$bps" -v ms="$QUEUE_MS" -v bu="$burst" 'BEGIN { printf "%d\n", bu + b * ms / 1000 }')
	tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" limit "$limit" ||
		die "tc tbf on $ns:$dev failed"
}

set_loss() { # namespace, PCT
	local ns=$1 bp
	bp=$(pct_bp "$2") || die "bad loss percentage '$2' (0..100, up to 2 decimals)"
	if [ "$bp" -eq 0 ]; then
		ip netns exec "$ns" nft -f - <<-EOF || die "nft in $ns failed"
			table inet lab
			delete table inet lab
		EOF
		return 0
	fi
	# add + delete + define in one transaction: replaces atomically.
	ip netns exec "$ns" nft -f - <<-EOF || die "nft in $ns failed"
		table inet lab
		delete table inet lab
		table inet lab {
			chain input {
				type filter hook input priority 0; policy accept;
				numgen random mod 10000 < $bp counter drop
			}
		}
	EOF
}

# Serialise up/down/loss of one lab (parallel go tests, bench scripts).
lock_lab() {
	mkdir -p /run/lock
	exec 9>"/run/lock/simlab-$NAME.lock"
	flock 9
}

# ------------------------------------------------------------------- down ---
running() { # pid exists and is not a zombie (kill -0 succeeds on zombies)
	local st
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

teardown() { # quiet; echoes the number of namespaces removed
	local nss ns pids p n=0 i
	mapfile -t nss < <(lab_namespaces)
	[ "${#nss[@]}" -eq 0 ] && { echo 0; return 0; }
	local all=()
	for ns in "${nss[@]}"; do
		mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
		for p in "${pids[@]}"; do
			[ -n "$p" ] && [ "$p" != $$ ] && all+=("$p")
		done
	done
	if [ "${#all[@]}" -gt 0 ]; then
		kill -TERM "${all[@]}" 2>/dev/null || true
		for ((i = 0; i < 20; i++)); do
			local alive=0
			for p in "${all[@]}"; do running "$p" && alive=1 && break; done
			[ "$alive" -eq 0 ] && break
			sleep 0.1
		done
		for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	fi
	for ns in "${nss[@]}"; do
		ip netns del "$ns" 2>/dev/null && n=$((n + 1))
		# a process that survived would keep the namespace alive detached;
		# the name is gone either way.
		[ -e "/run/netns/$ns" ] && { umount "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"; }
	done
	echo "$n"
}

cmd_down() {
	[ $# -eq 0 ] || die "down: unexpected argument '$1'"
	need_root
	lock_lab
	local n
	n=$(teardown)
	echo "$PROG: lab '$NAME' down ($n namespaces removed)" >&2
}

# --------------------------------------------------------------------- up ---
up_failed() { # EXIT trap while up builds the lab
	local rc=$?
	[ "$rc" -eq 0 ] && return 0
	echo "$PROG: up failed, tearing down lab '$NAME'" >&2
	teardown >/dev/null 2>&1 || true
	exit "$rc"
}

cmd_up() {
	local nodes=3 srate="" nrate="" loss="" slow="" slowrate=""
	while [ $# -gt 0 ]; do
		case $1 in
		--nodes) nodes=${2:?--nodes needs a value}; shift 2 ;;
		--server-rate) srate=${2:?--server-rate needs a value}; shift 2 ;;
		--node-rate) nrate=${2:?--node-rate needs a value}; shift 2 ;;
		--loss) loss=${2:?--loss needs a value}; shift 2 ;;
		--slow-node) slow=${2:?--slow-node needs a value}; shift 2 ;;
		--slow-rate) slowrate=${2:?--slow-rate needs a value}; shift 2 ;;
		*) die "up: unknown option '$1'" ;;
		esac
	done
	[[ $nodes =~ ^[0-9]+$ ]] && [ "$nodes" -le $MAXNODES ] || die "--nodes must be 0..$MAXNODES"
	nodes=$((10#$nodes))
	[ -z "$srate" ] || check_rate "$srate"
	[ -z "$nrate" ] || check_rate "$nrate"
	[ -z "$loss" ] || pct_bp "$loss" >/dev/null || die "bad --loss '$loss' (0..100, up to 2 decimals)"
	if [ -n "$slow$slowrate" ]; then
		[ -n "$slow" ] && [ -n "$slowrate" ] || die "--slow-node and --slow-rate go together"
		[[ $slow =~ ^[1-9][0-9]*$ ]] && [ "$slow" -le "$nodes" ] || die "--slow-node must be 1..$nodes"
		check_rate "$slowrate"
	fi
	[[ $BURST_MS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad LAB_BURST_MS '$BURST_MS'"
	[[ $QUEUE_MS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad LAB_QUEUE_MS '$QUEUE_MS'"
	need_root
	ensure_deps
	lock_lab
	teardown >/dev/null

	# From here on a failure tears down whatever was built.
	trap up_failed EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	local sw=$NAME-sw i ns h
	ip netns add "$sw" || die "ip netns add $sw failed"
	ip -n "$sw" -b - <<-EOF || die "switch setup failed"
		link set lo up
		link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0 mcast_querier 0 nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0
	EOF
	ip netns exec "$sw" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do [ -w $f ] && echo 1 >$f; done; true'

	local hosts=(srv) swport=(s0)
	for ((i = 1; i <= nodes; i++)); do hosts+=("n$i"); swport+=("n$i"); done

	local swcmds="" k
	for k in "${!hosts[@]}"; do
		h=${hosts[$k]} ns=$NAME-${hosts[$k]}
		ip netns add "$ns" || die "ip netns add $ns failed"
		# IPv6 off before eth0 exists, so it never gets a link-local address.
		ip netns exec "$ns" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do [ -w $f ] && echo 1 >$f; done; true'
		# Both ends are created directly in lab namespaces.
		ip -n "$sw" link add "${swport[$k]}" type veth peer name eth0 netns "$ns" ||
			die "veth ${swport[$k]} <-> $ns:eth0 failed"
		ip -n "$ns" -b - <<-EOF || die "host setup in $ns failed"
			link set lo up
			link set eth0 multicast on
			addr add $(host_addr "$h")/16 brd + dev eth0
			link set eth0 up
			route add 224.0.0.0/4 dev eth0
		EOF
		swcmds+="link set ${swport[$k]} master br0 up"$'\n'
	done
	ip -n "$sw" -b - <<<"${swcmds}link set br0 up" || die "switch port setup failed"

	if [ -n "$srate" ]; then
		shape "$NAME-srv" eth0 "$srate"
		shape "$sw" s0 "$srate"
	fi
	for ((i = 1; i <= nodes; i++)); do
		local r=$nrate
		[ -n "$slow" ] && [ "$i" -eq "$slow" ] && r=$slowrate
		[ -n "$r" ] || continue
		shape "$NAME-n$i" eth0 "$r"
		shape "$sw" "n$i" "$r"
	done
	if [ -n "$loss" ] && [ "$(pct_bp "$loss")" -gt 0 ]; then
		for ((i = 1; i <= nodes; i++)); do set_loss "$NAME-n$i" "$loss"; done
	fi

	trap - EXIT
	local desc="srv 198.18.0.1 + $nodes nodes"
	[ -n "$srate" ] && desc+=", server ${srate}"
	[ -n "$nrate" ] && desc+=", nodes ${nrate}"
	[ -n "$slow" ] && desc+=", n$slow ${slowrate}"
	[ -n "$loss" ] && desc+=", loss ${loss}%"
	echo "$PROG: lab '$NAME' up: $desc" >&2
}

# ------------------------------------------------------------ small verbs ---
cmd_exec() {
	[ $# -ge 1 ] || die "exec: missing HOST"
	local h=$1
	shift
	[ "${1:-}" = -- ] || die "exec: expected '--' after HOST"
	shift
	[ $# -ge 1 ] || die "exec: missing command"
	local ns
	ns=$(host_ns "$h")
	exec ip netns exec "$ns" "$@"
}

cmd_addr() {
	[ $# -eq 1 ] || die "addr: expected HOST"
	host_ns "$1" >/dev/null
	host_addr "$1"
}

cmd_bytes() {
	[ $# -eq 1 ] || die "bytes: expected HOST"
	local ns
	ns=$(host_ns "$1")
	ip -n "$ns" -s -o link show dev eth0 2>/dev/null | awk '
		{ for (i = 1; i <= NF; i++) {
			if ($i == "RX:" && rx == "") { for (j = i; j <= NF && $j != "\\"; j++); rx = $(j + 1) }
			if ($i == "TX:" && tx == "") { for (j = i; j <= NF && $j != "\\"; j++); tx = $(j + 1) } } }
		END { if (rx == "" || tx == "") exit 1; print rx, tx }' || die "cannot read counters of $ns:eth0"
}

cmd_loss() {
	[ $# -eq 2 ] || die "loss: expected HOST PCT"
	need_root
	local ns
	ns=$(host_ns "$1")
	command -v nft >/dev/null 2>&1 || ensure_deps
	lock_lab
	set_loss "$ns" "$2"
}

cmd_rate() {
	[ $# -eq 2 ] || die "rate: expected HOST RATE"
	need_root
	local ns port
	ns=$(host_ns "$1")
	check_rate "$2"
	port=$1
	[ "$1" = srv ] && port=s0
	lock_lab
	shape "$ns" eth0 "$2"
	shape "$NAME-sw" "$port" "$2"
}

cmd_list() {
	[ $# -eq 0 ] || die "list: unexpected argument '$1'"
	ip netns list 2>/dev/null | awk '{ n = $1 } n ~ /-(sw|srv)$/ { sub(/-(sw|srv)$/, "", n); print n }' | sort -u
}

# ------------------------------------------------------------------- main ---
[ $# -ge 1 ] || usage
verb=$1
shift
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--name) NAME=${2:-}; [ -n "$NAME" ] || die "--name needs a value"; shift 2 ;;
	--name=*) NAME=${1#--name=}; shift ;;
	--) args+=("$@"); break ;; # exec's command: passed through untouched
	*) args+=("$1"); shift ;;
	esac
done
check_name
case $verb in
up) cmd_up "${args[@]}" ;;
down) cmd_down "${args[@]}" ;;
exec) cmd_exec "${args[@]}" ;;
addr) cmd_addr "${args[@]}" ;;
bytes) cmd_bytes "${args[@]}" ;;
loss) cmd_loss "${args[@]}" ;;
rate) cmd_rate "${args[@]}" ;;
list) cmd_list "${args[@]}" ;;
-h | --help | help) usage ;;
*) die "unknown command '$verb' (up, down, exec, addr, bytes, loss, rate, list)" ;;
esac
