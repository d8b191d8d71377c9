#!/usr/bin/env bash
# bench/deps.sh — install the tools `make bench` compares sim against.
#
# Idempotent and quiet: if every binary is already on PATH this does nothing
# (no apt-get update, no network), so repeated `make bench` runs stay fast.
# All packages are from Debian bookworm main:
#   restic 0.14, casync 2+20201210, ostree 2022.7, rsync, zstd, tar,
#   time (GNU /usr/bin/time for peak RSS), debootstrap (builds the corpus),
#   attr/acl (getfattr/getfacl, handy when comparing checkouts),
#   mktorrent, opentracker, aria2 (the SystemImager way of BitTorrent).
set -euo pipefail

# binary -> package that ships it
declare -A want=(
	[restic]=restic
	[casync]=casync
	[ostree]=ostree
	[rsync]=rsync
	[zstd]=zstd
	[tar]=tar
	[/usr/bin/time]=time
	[debootstrap]=debootstrap
	[getfattr]=attr
	[getfacl]=acl
	[mktorrent]=mktorrent
	[opentracker]=opentracker
	[aria2c]=aria2
	[udp-sender]=udpcast
)

missing=()
for bin in "${!want[@]}"; do
	command -v "$bin" >/dev/null 2>&1 || missing+=("${want[$bin]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "bench/deps.sh: need root to install: ${missing[*]}" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "bench/deps.sh: installing ${missing[*]}" >&2
# apt/debconf chatter goes to a log that is shown only if something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "bench/deps.sh: apt-get failed" >&2
	exit 1
fi
