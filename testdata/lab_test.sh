#!/usr/bin/env bash
# testdata/lab_test.sh — self-test of testdata/lab.sh. Needs root; ~30 s.
#
# Builds labs named $LAB_NAME (default labtest) and checks: ping from every
# node to the server; tbf shaping of a node link (one 50 MB HTTP download at
# --node-rate 100mbit), of the server uplink (two nodes downloading at once at
# --server-rate 100mbit share it) and of a --slow-node; the `bytes` counters
# against the bytes transferred; random loss (`loss HOST PCT` and `up --loss`)
# on 1000 UDP datagrams; multicast from srv to 239.1.1.1 received by two nodes;
# error handling; `up` over an existing lab; `down` of a half-built lab; and
# that no namespace is left behind. Prints one line per check and
# "N passed, M failed"; exits non-zero if any check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=$HERE/lab.sh
NAME=${LAB_NAME:-labtest}
MB=1000000

[ "$(id -u)" -eq 0 ] || { echo "lab_test.sh: must run as root" >&2; exit 1; }

# Tools the test itself needs (lab.sh installs iproute2/nftables/python3).
declare -A want=([python3]=python3 [curl]=curl [ping]=iputils-ping [ip]=iproute2 [nft]=nftables)
missing=()
for b in "${!want[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("${want[$b]}"); done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "lab_test.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1
fi

T=$(mktemp -d /tmp/labtest.XXXXXX)
cleanup() {
	local rc=$?
	"$LAB" down --name "$NAME" 2>/dev/null || true
	rm -rf "$T"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pass=0 fail=0
ok() { pass=$((pass + 1)); printf 'PASS  %s\n' "$*"; }
bad() { fail=$((fail + 1)); printf 'FAIL  %s\n' "$*"; }
check() { # description, then a command that succeeds when the check passes
	local d=$1
	shift
	if "$@"; then ok "$d"; else bad "$d"; fi
}
quiet() { "$@" >/dev/null 2>&1; }
within() { # value lo hi (floats)
	awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(v >= lo && v <= hi) }'
}
lab() { "$LAB" "$1" --name "$NAME" "${@:2}"; }
mbs() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }

# Goodput of a TCP bulk transfer through tbf at RATE bit/s: tbf counts whole
# frames (14 B Ethernet + 20 B IP + 32 B TCP with timestamps + 1448 B payload).
goodput() { awk -v r="$1" 'BEGIN { printf "%.0f\n", r / 8 * 1448 / 1514 }'; }

# ---------------------------------------------------------------- helpers ---
head -c $((50 * MB)) /dev/urandom >"$T/f50"
head -c $((10 * MB)) "$T/f50" >"$T/f10"

cat >"$T/udp.py" <<'EOF'
import socket, struct, sys, time
mode = sys.argv[1]
if mode == "recv":  # recv PORT GROUP|- READYFILE: count datagrams until 1.5 s of silence
    port, group, ready = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if group != "-":
        s.bind((group, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
    else:
        s.bind(("0.0.0.0", port))
    open(ready, "w").close()
    n, s_timeout = 0, 10.0  # generous wait for the first datagram
    while True:
        s.settimeout(s_timeout)
        try:
            s.recv(2048)
        except socket.timeout:
            break
        n += 1
        s_timeout = 1.5
    print(n)
else:  # send ADDR PORT COUNT: COUNT datagrams of 200 bytes, ~0.2 ms apart
    addr, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(count):
        s.sendto(b"%08d" % i + b"x" * 192, (addr, port))
        time.sleep(0.0002)
EOF

# udp_count HOST... -- ADDR COUNT : start receivers in HOSTs, send COUNT
# datagrams from srv to ADDR, print one count per receiving host.
port=9000
udp_count() {
	local hosts=() h addr count
	while [ "$1" != -- ]; do hosts+=("$1"); shift; done
	shift
	addr=$1 count=$2 port=$((port + 1))
	local group=-
	case $addr in 2[23][0-9].*) group=$addr ;; esac
	local pids=()
	for h in "${hosts[@]}"; do
		rm -f "$T/ready.$h" "$T/count.$h"
		lab exec "$h" -- python3 "$T/udp.py" recv "$port" "$group" "$T/ready.$h" >"$T/count.$h" &
		pids+=($!)
	done
	for h in "${hosts[@]}"; do
		for _ in $(seq 100); do [ -e "$T/ready.$h" ] && break; sleep 0.05; done
	done
	lab exec srv -- python3 "$T/udp.py" send "$addr" "$port" "$count"
	wait "${pids[@]}"
	for h in "${hosts[@]}"; do cat "$T/count.$h"; done
}

http_up() { # serve $T on srv:8080
	lab exec srv -- python3 -m http.server 8080 --bind 198.18.0.1 --directory "$T" >/dev/null 2>&1 &
	for _ in $(seq 100); do
		lab exec n1 -- curl -s -o /dev/null http://198.18.0.1:8080/ && return 0
		sleep 0.05
	done
	return 1
}
get() { # HOST FILE -> "bytes/s seconds"
	lab exec "$1" -- curl -sS -o /dev/null -w '%{speed_download} %{time_total}\n' "http://198.18.0.1:8080/$2"
}

echo "== lab A: 3 nodes, --node-rate 100mbit"
lab up --nodes 3 --node-rate 100mbit

for h in n1 n2 n3; do
	check "ping $h ($(lab addr "$h")) -> srv" quiet lab exec "$h" -- ping -c1 -W1 198.18.0.1
done
check "addr srv = 198.18.0.1" [ "$(lab addr srv)" = 198.18.0.1 ]
check "list shows $NAME" grep -qx "$NAME" <<<"$("$LAB" list)"

check "http server up in srv" http_up
read -r _ stx0 <<<"$(lab bytes srv)"
read -r nrx0 ntx0 <<<"$(lab bytes n1)"
read -r speed secs <<<"$(get n1 f50)"
read -r _ stx1 <<<"$(lab bytes srv)"
read -r nrx1 ntx1 <<<"$(lab bytes n1)"
exp=$(goodput 100e6)
check "n1 50 MB at node-rate 100mbit: $(mbs "$speed") MB/s in ${secs}s (expect $(mbs "$exp") ±20%)" \
	within "$speed" "$(awk -v e="$exp" 'BEGIN{print e*0.8}')" "$(awk -v e="$exp" 'BEGIN{print e*1.2}')"
d_stx=$((stx1 - stx0)) d_nrx=$((nrx1 - nrx0)) d_ntx=$((ntx1 - ntx0))
# With GSO a counter charges the headers once per 64 KiB super-packet, so a
# transfer counts ~its payload; srv also counts what the 100mbit port dropped
# (and TCP resent).
check "bytes: n1 rx +$(mbs $d_nrx) MB for 50 MB (expect 50..54)" within "$d_nrx" $((50 * MB)) $((54 * MB))
check "bytes: srv tx +$(mbs $d_stx) MB for 50 MB (expect 50..56, resends included)" \
	within "$d_stx" $((50 * MB)) $((56 * MB))
check "bytes: n1 tx +$(mbs $d_ntx) MB (ACKs, expect < 2.5 MB)" within "$d_ntx" 1 $((5 * MB / 2))

# Loss set and removed with `lab.sh loss`.
lab loss n1 5
got=$(udp_count n1 -- 198.18.1.1 1000)
check "loss n1 5: $((1000 - got))/1000 UDP datagrams dropped (expect 20..90)" within "$((1000 - got))" 20 90
lab loss n1 0
got=$(udp_count n1 -- 198.18.1.1 1000)
check "loss n1 0: $got/1000 received (expect 1000)" [ "$got" -eq 1000 ]
check "loss n1 0 removed the nft table" bash -c "! ip netns exec $NAME-n1 nft list table inet lab >/dev/null 2>&1"

# Multicast from srv to 239.1.1.1, joined by n2 and n3.
mapfile -t got < <(udp_count n2 n3 -- 239.1.1.1 200)
check "multicast 239.1.1.1 from srv: n2 got ${got[0]}/200, n3 got ${got[1]}/200" \
	[ "${got[0]}" -eq 200 -a "${got[1]}" -eq 200 ]

# Errors are clear and harmless.
check "exec on a missing host fails" bash -c "! '$LAB' exec --name $NAME n9 -- true 2>/dev/null"
check "bad rate rejected" bash -c "! '$LAB' up --name ${NAME}x --node-rate fast 2>/dev/null"
check "bad --slow-node rejected, nothing left" bash -c \
	"! '$LAB' up --name ${NAME}x --nodes 2 --slow-node 3 --slow-rate 1mbit 2>/dev/null && ! ip netns list | grep -q '^${NAME}x-'"

echo "== lab B (up over lab A): 3 nodes, --server-rate 100mbit, --slow-node 3 --slow-rate 20mbit"
mapfile -t oldpids < <(ip netns pids "$NAME-srv")
lab up --nodes 3 --server-rate 100mbit --slow-node 3 --slow-rate 20mbit
none_alive() { # pids...: at least one given, none still running
	local p
	[ $# -gt 0 ] || return 1
	for p in "$@"; do [ -e "/proc/$p" ] && [ "$(awk '{ print $3 }' "/proc/$p/stat")" != Z ] && return 1; done
	return 0
}
check "up over an existing lab killed its processes (${#oldpids[@]} in srv)" none_alive "${oldpids[@]}"
check "http server up in srv" http_up
t0=$(date +%s.%N)
get n1 f50 >"$T/g1" &
p1=$!
get n2 f50 >"$T/g2" &
p2=$!
wait $p1 $p2
t1=$(date +%s.%N)
read -r s1 _ <"$T/g1"
read -r s2 _ <"$T/g2"
sum=$(awk -v a="$t0" -v b="$t1" -v m=$MB 'BEGIN { printf "%.0f", 100 * m / (b - a) }')
check "n1+n2 concurrently at server-rate 100mbit: n1 $(mbs "$s1") + n2 $(mbs "$s2"), aggregate $(mbs "$sum") MB/s (expect $(mbs "$exp") ±20%)" \
	within "$sum" "$(awk -v e="$exp" 'BEGIN{print e*0.8}')" "$(awk -v e="$exp" 'BEGIN{print e*1.2}')"
# Each speed is averaged over its own download; once one ends the other has
# the whole uplink, so only check that neither was starved.
check "  neither starved (each at least 30% of $(mbs "$exp") MB/s)" \
	within "$(awk -v a="$s1" -v b="$s2" 'BEGIN{print (a < b ? a : b)}')" "$(awk -v e="$exp" 'BEGIN{print e*0.3}')" 1e12
read -r s3 secs <<<"$(get n3 f10)"
exp3=$(goodput 20e6)
check "n3 10 MB at slow-rate 20mbit: $(mbs "$s3") MB/s in ${secs}s (expect $(mbs "$exp3") ±20%)" \
	within "$s3" "$(awk -v e="$exp3" 'BEGIN{print e*0.8}')" "$(awk -v e="$exp3" 'BEGIN{print e*1.2}')"

echo "== lab C: 2 nodes, --loss 5"
lab up --nodes 2 --loss 5
mapfile -t got < <(udp_count n1 n2 -- 239.1.1.2 1000)
check "up --loss 5, multicast: n1 lost $((1000 - got[0])), n2 lost $((1000 - got[1])) of 1000 (expect 20..90 each)" \
	within "$((2000 - got[0] - got[1]))" 40 180

echo "== lab D: 2 nodes, --node-rate 1gbit, --slow-node 2 --slow-rate 200mbit"
lab up --nodes 2 --node-rate 1gbit --slow-node 2 --slow-rate 200mbit
check "http server up in srv" http_up
for hr in "n1 1e9 1gbit" "n2 200e6 200mbit"; do
	read -r h r rn <<<"$hr"
	read -r speed secs <<<"$(get "$h" f50)"
	e=$(goodput "$r")
	check "$h 50 MB at $rn: $(mbs "$speed") MB/s in ${secs}s (expect $(mbs "$e") ±20%)" \
		within "$speed" "$(awk -v e="$e" 'BEGIN{print e*0.8}')" "$(awk -v e="$e" 'BEGIN{print e*1.2}')"
done

echo "== teardown"
lab down
check "down removed every namespace" bash -c "! ip netns list | grep -q '^$NAME-'"
check "list no longer shows $NAME" bash -c "! '$LAB' list | grep -qx '$NAME'"
ip netns add "$NAME-sw"
ip netns add "$NAME-n2"
ip netns exec "$NAME-n2" sleep 300 &
check "down of a half-built lab (with a process inside)" lab down
check "  left nothing" bash -c "! ip netns list | grep -q '^$NAME-'"
check "down of a missing lab succeeds" lab down
wait

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
