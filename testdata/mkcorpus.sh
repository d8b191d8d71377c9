#!/usr/bin/env bash
# testdata/mkcorpus.sh [OUTDIR] — build (once) and cache sim's real test corpus.
#
#   OUTDIR/v1   Debian bookworm, `debootstrap --variant=minbase`
#   OUTDIR/v2   v1 + openssh-server python3 vim-tiny iproute2 less (apt-get in
#               a chroot, --no-install-recommends), apt caches and lists removed
#   OUTDIR/v3   v2 with one line appended to /etc/motd and /etc/ssh/sshd_config;
#               nothing else differs from v2 (copied with cp -a)
#
# OUTDIR defaults to ${SIM_CORPUS:-/var/cache/sim/corpus}. Each finished tree
# has a stamp OUTDIR/vN.stamp; when all three are present and match the recipe
# below the script prints the cached summary and exits (a few ms, no network,
# no tree walk). A tree is built in OUTDIR/.tmp-vN and renamed into place only
# when complete, so an interrupted build never leaves a half tree behind a
# stamp. Rebuilding vN invalidates every later version.
#
# Determinism (cheap parts only): SOURCE_DATE_EPOCH is exported into every
# package script, and every mtime newer than it is clamped to it after each
# build (as debuerreotype does); /etc/hostname and /etc/resolv.conf, which
# debootstrap copies from the host, are replaced/removed; the sources.list in
# the image always names deb.debian.org whatever mirror was used. What stays
# non-deterministic: log contents, debconf caches, the ssh host keys.
#
# Needs root (debootstrap, chroot, mount). Installs debootstrap if missing.
# Progress goes to stderr, logs to OUTDIR/logs/, the summary to stdout.
set -euo pipefail

# Bump when the definition of any version changes: stale stamps then force a
# rebuild of that version and everything after it.
readonly RECIPE="sim-corpus/1 suite=bookworm variant=minbase"
readonly SUITE=bookworm
readonly V2_PKGS=(openssh-server python3 vim-tiny iproute2 less)
readonly CANON_MIRROR=http://deb.debian.org/debian
# A fixed 2025-05-20T00:00:00Z, deliberately not taken from the environment:
# it is part of the corpus definition (all mtimes are clamped to it).
export SOURCE_DATE_EPOCH=1747699200

OUT=${1:-${SIM_CORPUS:-/var/cache/sim/corpus}}

stamp_ok() { # vN -> true when OUT/vN is complete and built by this recipe
	[ -d "$OUT/$1" ] && [ -f "$OUT/$1.stamp" ] &&
		[ "$(head -n1 "$OUT/$1.stamp")" = "recipe=$RECIPE $1" ]
}

summary() { # the summary lines recorded in the stamps at build time
	local v
	for v in v1 v2 v3; do sed -n 's/^summary=//p' "$OUT/$v.stamp"; done
}

# Fast path: everything cached. Deliberately before any locking or tree walk.
if stamp_ok v1 && stamp_ok v2 && stamp_ok v3; then
	summary
	exit 0
fi

# fd 3 = the caller's stderr, so messages from the EXIT trap are seen even if it
# fires while a build step has stderr redirected into a log file.
exec 3>&2
log() { printf '[mkcorpus %s] %s\n' "$(date +%T)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mount)"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd -P) # absolute, symlink-free: compared against mountinfo

# Two concurrent runs (say `go test` and `make bench`) must not build into the
# same .tmp-vN; the second waits and then takes the fast path.
exec 9>"$OUT/.lock"
flock 9
if stamp_ok v1 && stamp_ok v2 && stamp_ok v3; then summary; exit 0; fi

# ---------------------------------------------------------------- mounts ---
MOUNTS=() # mount points we created, unmounted in reverse order

mounted_under() { # dir -> prints mount points at or below dir
	# mountinfo field 5 is the mount point, octal-escaped: a path with spaces
	# would not match. Every rm -rf here also runs with --one-file-system, so
	# even then it would stop at the mount instead of descending into it.
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

unmount_all() {
	local i m
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		m=${MOUNTS[i]}
		umount "$m" 2>/dev/null || umount -l "$m" || log "WARNING: cannot unmount $m"
	done
	MOUNTS=()
}

chroot_mounts() { # rootfs -> mount what apt/dpkg maintainer scripts expect
	local r=$1
	mount -t proc proc "$r/proc" && MOUNTS+=("$r/proc")
	mount -t sysfs -o ro sysfs "$r/sys" && MOUNTS+=("$r/sys")
	# A fresh devpts instance (not a bind of the host's) so nothing the chroot
	# does can touch the host's ptys; apt uses a pty for dpkg's output.
	mkdir -p "$r/dev/pts"
	mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$r/dev/pts" &&
		MOUNTS+=("$r/dev/pts")
}

safe_rm() { # dir -> rm -rf, but never through a live mount
	[ -e "$1" ] || return 0
	if [ -n "$(mounted_under "$1")" ]; then
		die "refusing to remove $1: still mounted: $(mounted_under "$1" | tr '\n' ' ')"
	fi
	rm -rf --one-file-system "$1"
}

cleanup() {
	local rc=$? v m
	unmount_all
	for v in v1 v2 v3; do
		if [ -e "$OUT/.tmp-$v" ]; then
			# Also whatever a killed debootstrap left mounted in its target.
			# Only our own scratch trees are touched; deepest first.
			for m in $(mounted_under "$OUT/.tmp-$v" | sort -r); do
				umount "$m" 2>/dev/null || umount -l "$m" || true
			done
			if [ -n "$(mounted_under "$OUT/.tmp-$v")" ]; then
				log "WARNING: left $OUT/.tmp-$v in place: still mounted"
			else
				rm -rf --one-file-system "$OUT/.tmp-$v"
			fi
		fi
	done
	[ "$rc" -eq 0 ] || log "FAILED (exit $rc); logs in $OUT/logs/"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------- helpers ---
host_mirror() {
	# The URIs: of the deb822 stanza whose Suites: lists bare "bookworm",
	# else the first matching one-line entry, else deb.debian.org.
	local m=""
	if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
		m=$(awk -v s="$SUITE" '
			BEGIN { RS = ""; FS = "\n" }          # one paragraph per stanza
			{
				uri = ""; hit = 0; deb = 0
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri = u[1] }
					if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
					if ($i ~ /^Suites:/)  { n = split($i, ss, /[ \t]+/); for (j = 2; j <= n; j++) if (ss[j] == s) hit = 1 }
				}
				if (deb && hit && uri != "") { print uri; exit }
			}' /etc/apt/sources.list.d/*.sources)
	fi
	if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
		m=$(awk -v s="$SUITE" '$1 == "deb" {
				i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i + 1) == s) { print $i; exit }
			}' /etc/apt/sources.list)
	fi
	echo "${m:-$CANON_MIRROR}"
}

ensure_debootstrap() {
	command -v debootstrap >/dev/null && return 0
	log "installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

clamp_mtimes() { # dir -> every mtime newer than SOURCE_DATE_EPOCH becomes it
	# -h: set the symlink's own time. Directories too: touching an entry does
	# not change its parent's mtime, so order does not matter.
	find "$1" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 |
		xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
}

in_chroot() { # rootfs cmd... -> run with a clean, deterministic environment
	local r=$1
	shift
	chroot "$r" /usr/bin/env -i \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
		SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"
}

copy_tree() { # src dst -> exact copy: hardlinks, xattrs, ACLs, times, owners
	cp -a --reflink=auto "$1" "$2"
}

# Summary of one finished tree, stored in its stamp so the fast path can
# print it without walking the tree again.
describe() { # vN dir secs
	local du_h du_b files
	du_h=$(du -sh "$2" | cut -f1)
	du_b=$(du -sb --apparent-size "$2" | cut -f1)
	files=$(find "$2" -xdev | wc -l)
	printf '%s: du %s, apparent %s bytes (%s MB), %s entries, built in %ss' \
		"$1" "$du_h" "$du_b" "$((du_b / 1000000))" "$files" "$3"
}

finish() { # vN start-epoch -> rename into place, stamp
	local v=$1 t0=$2 tmp="$OUT/.tmp-$1" secs
	[ -z "$(mounted_under "$tmp")" ] || die "$tmp still has mounts"
	safe_rm "$OUT/$v"
	mv -T "$tmp" "$OUT/$v"
	secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	{
		echo "recipe=$RECIPE $v"
		echo "built=$(date -u +%FT%TZ) mirror=$MIRROR"
		echo "summary=$(describe "$v" "$OUT/$v" "$secs")"
	} >"$OUT/$v.stamp.new"
	mv -f "$OUT/$v.stamp.new" "$OUT/$v.stamp"
	log "$(sed -n 's/^summary=//p' "$OUT/$v.stamp")"
}

invalidate_from() { # N -> drop stamps of vN and every later version
	local n
	for ((n = $1; n <= 3; n++)); do rm -f "$OUT/v$n.stamp"; done
}

# ---------------------------------------------------------------- builds ---
MIRROR=$(host_mirror)

build_v1() {
	local t0 tmp="$OUT/.tmp-v1"
	t0=$(date +%s.%N)
	ensure_debootstrap
	safe_rm "$tmp"
	log "v1: debootstrap --variant=minbase $SUITE from $MIRROR (log: logs/v1.log)"
	if ! debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$OUT/logs/v1.log" 2>&1; then
		tail -n 20 "$OUT/logs/v1.log" >&3
		die "debootstrap failed"
	fi
	# Host-specific files debootstrap copied in: make them the same everywhere.
	echo localhost >"$tmp/etc/hostname"
	rm -f "$tmp/etc/resolv.conf"
	echo "deb $CANON_MIRROR $SUITE main" >"$tmp/etc/apt/sources.list"
	clamp_mtimes "$tmp"
	finish v1 "$t0"
}

build_v2() {
	local t0 tmp="$OUT/.tmp-v2"
	t0=$(date +%s.%N)
	safe_rm "$tmp"
	log "v2: copy v1, apt-get install ${V2_PKGS[*]} (log: logs/v2.log)"
	copy_tree "$OUT/v1" "$tmp"

	# Temporary, removed again below: name resolution for apt, the real mirror,
	# and a policy-rc.d so postinsts (sshd!) do not start daemons.
	cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
	echo "deb $MIRROR $SUITE main" >"$tmp/etc/apt/sources.list"
	printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
	chmod 755 "$tmp/usr/sbin/policy-rc.d"

	chroot_mounts "$tmp"
	{
		# As the host's apt config does: the mirror may serve an archive
		# snapshot whose Release files are past their Valid-Until.
		in_chroot "$tmp" apt-get -o Acquire::Check-Valid-Until=false update &&
			in_chroot "$tmp" apt-get install -y --no-install-recommends "${V2_PKGS[@]}" &&
			in_chroot "$tmp" apt-get clean
	} >"$OUT/logs/v2.log" 2>&1 || {
		tail -n 20 "$OUT/logs/v2.log" >&3
		die "apt-get in chroot failed"
	}
	unmount_all

	rm -f "$tmp/usr/sbin/policy-rc.d" "$tmp/etc/resolv.conf"
	echo "deb $CANON_MIRROR $SUITE main" >"$tmp/etc/apt/sources.list"
	rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin
	clamp_mtimes "$tmp"
	finish v2 "$t0"
}

build_v3() {
	local t0 tmp="$OUT/.tmp-v3" f
	t0=$(date +%s.%N)
	safe_rm "$tmp"
	log "v3: copy v2, edit /etc/motd and /etc/ssh/sshd_config"
	copy_tree "$OUT/v2" "$tmp"
	for f in etc/motd etc/ssh/sshd_config; do
		# Appending through a symlink would edit some other file.
		if [ ! -f "$tmp/$f" ] || [ -L "$tmp/$f" ]; then
			die "v3: /$f is not a regular file"
		fi
	done
	echo "# sim corpus v3" >>"$tmp/etc/motd"
	echo "Banner /etc/motd" >>"$tmp/etc/ssh/sshd_config"
	# Deterministic and distinct from v2's (clamped) times. Appending did not
	# change /etc or /etc/ssh themselves, so only these two entries differ.
	touch -d "@$((SOURCE_DATE_EPOCH + 86400))" "$tmp/etc/motd" "$tmp/etc/ssh/sshd_config"
	finish v3 "$t0"
}

T0=$(date +%s.%N)
if ! stamp_ok v1; then invalidate_from 1; build_v1; fi
if ! stamp_ok v2; then invalidate_from 2; build_v2; fi
if ! stamp_ok v3; then invalidate_from 3; build_v3; fi
log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
summary
