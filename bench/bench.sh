#!/usr/bin/env bash
# bench/bench.sh — measure sim against its peers on the real corpus and print
# ONE markdown table (stdout and bench/results.md). Progress goes to stderr.
#
# Environment:
#   SIM            sim binary                     (default ./bin/sim)
#   SIM_CORPUS     corpus dir, see testdata/mkcorpus.sh (default /var/cache/sim/corpus)
#   BENCH_DIR      scratch dir, wiped at start and end (default /var/tmp/sim-bench)
#   BENCH_RESULTS  where to write the table too  (default bench/results.md)
#   BENCH_KEEP=1   keep BENCH_DIR afterwards (stores, checkouts, logs)
#   BENCH_RUNS=N   repeat the commit-v1 and checkout measurements N times
#                  (fresh store / empty dir each time) and report the median
#                  and range; default 1. Use 3 on a noisy machine: single shots
#                  of one command were seen to vary 2-8x on a shared 2-core VM.
#
# Needs root (the corpus build, and ostree's commit, see OSTREE_COMMIT) and
# the tools from bench/deps.sh. Every tool runs with its default settings,
# against a warm page cache: right before each timed command, after a `sync`
# (so the previous step's writeback is not billed to it), its inputs are read
# once, untimed (see run). Reading the corpus once at the start is not enough
# where, as on the VMs this was written on, DAMON proactively pages out page
# cache that has been idle for ~6 s.
# Commit v1 and checkout run BENCH_RUNS times, re-commit and rollback 3 times;
# contenders are interleaved (see rounds) and the median is reported.

# The cmd_NAME arrays below are read indirectly by rounds().
# shellcheck disable=SC2034
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIM=${SIM:-./bin/sim}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}
B=${BENCH_DIR:-/var/tmp/sim-bench}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results.md}
RUNS=${BENCH_RUNS:-1}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------- checks ---
case $SIM in */*) ;; *) SIM=$(command -v "$SIM" || echo "$SIM") ;; esac
[ -x "$SIM" ] || die "sim binary not found at '$SIM' (build it first, or set SIM=)"
SIM=$(cd "$(dirname "$SIM")" && pwd)/$(basename "$SIM")
for t in casync restic ostree rsync zstd tar unshare /usr/bin/time; do
	command -v "$t" >/dev/null || die "$t missing: run bench/deps.sh"
done
[ "$(id -u)" -eq 0 ] || die "run as root (corpus build, ostree commit needs a mount namespace)"

case $B in
/?*) ;;
*) die "BENCH_DIR must be an absolute path other than /" ;;
esac
B=${B%/}
case $CORPUS/ in "$B"/*) die "BENCH_DIR ($B) must not contain the corpus" ;; esac

mounted_under() { awk -v d="$1" '$5 == d || index($5, d "/") == 1' /proc/self/mountinfo; }
wipe() {
	[ -e "$B" ] || return 0
	# ostree's tmpfs lives in a private mount namespace, so this never fires
	# unless something else went badly wrong; rm -rf through a mount would.
	[ -z "$(mounted_under "$B")" ] || die "refusing to wipe $B: something is mounted under it"
	rm -rf --one-file-system "$B"
}
cleanup() {
	local rc=$?
	if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $B"; else wipe || true; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- corpus ---
log "corpus: $CORPUS"
"$ROOT/testdata/mkcorpus.sh" "$CORPUS" >&2
V1=$CORPUS/v1 V2=$CORPUS/v2 V3=$CORPUS/v3

wipe
mkdir -p "$B"/{log,tar,casync,co,rb}

# A full read, piped through cat: GNU tar skips reading file data when its
# output is /dev/null, which would warm only the metadata.
warm() { tar -cf - "$@" 2>/dev/null | cat >/dev/null || true; }
log "warm-up: reading the corpus once (and each step's inputs again before it)"
warm "$V1" "$V2" "$V3"

# ---------------------------------------------------------------- helpers ---
declare -A T RSS  # wall seconds / peak RSS (KiB) per measurement name
FAILED=()

# run NAME CMD... — time CMD (wall clock, ns resolution) and its peak RSS.
# First, untimed: sync, then read the paths in the WARM array (CMD's inputs).
# stdout/stderr go to $B/log/NAME.{out,err}. A failing command is recorded
# as FAIL and the run goes on, so one broken tool does not hide the others.
WARM=()
run() {
	local name=$1 t0 t1
	shift
	sync
	if [ "${#WARM[@]}" -gt 0 ]; then warm "${WARM[@]}"; fi
	t0=$(date +%s.%N)
	if /usr/bin/time -f %M -o "$B/log/$name.rss" "$@" >"$B/log/$name.out" 2>"$B/log/$name.err"; then
		t1=$(date +%s.%N)
		T[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
		RSS[$name]=$(tail -n1 "$B/log/$name.rss")
		log "$name: ${T[$name]} s, peak RSS ${RSS[$name]} KiB"
	else
		T[$name]=FAIL RSS[$name]=FAIL
		FAILED+=("$name")
		log "$name: FAILED: $*"
		tail -n 15 "$B/log/$name.err" | sed 's/^/    /' >&2
	fi
}

ok() { [ "${T[$1]:-FAIL}" != FAIL ]; }

median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }

# rounds N NAME... — N rounds; in each, every NAME runs once: reset_NAME
# (untimed), then run NAME_i "${cmd_NAME[@]}" with WARM=("${warm_NAME[@]}").
# Interleaving, with the order rotated each round, matters on a shared VM: the
# same command drifts slower or faster within a minute, and whichever tool ran
# in a bad stretch, or always second, would get the blame. Afterwards T[NAME]
# is the median, LO/HI[NAME] the range, RSS[NAME] the largest peak, and
# log/NAME.out the last run's stdout. A tool that fails is not run again.
declare -A LO HI
rounds() {
	local n=$1 i j k name cmd w times
	shift
	local names=("$@")
	k=${#names[@]}
	for ((i = 1; i <= n; i++)); do
		for ((j = 0; j < k; j++)); do
			name=${names[(i - 1 + j) % k]}
			[ "${T[$name]:-}" = FAIL ] && continue
			"reset_$name"
			cmd="cmd_${name}[@]" w="warm_${name}[@]"
			WARM=("${!w}")
			run "${name}_$i" "${!cmd}"
			ok "${name}_$i" || T[$name]=FAIL RSS[$name]=FAIL
			cp "$B/log/${name}_$i.out" "$B/log/$name.out"
		done
	done
	for name in "${names[@]}"; do
		[ "${T[$name]:-}" = FAIL ] && continue
		times=()
		RSS[$name]=0
		for ((i = 1; i <= n; i++)); do
			times+=("${T[${name}_$i]}")
			if ((RSS[${name}_$i] > RSS[$name])); then RSS[$name]=${RSS[${name}_$i]}; fi
		done
		T[$name]=$(median "${times[@]}")
		LO[$name]=$(printf '%s\n' "${times[@]}" | sort -g | head -n1)
		HI[$name]=$(printf '%s\n' "${times[@]}" | sort -g | tail -n1)
	done
}

# Everything handed to run() must be a program, not a shell function:
# /usr/bin/time execs it. Pipelines therefore go through `bash -c`.
SIMC=("$SIM" --store "$B/sim")

# The commit id is the last stdout line of `sim commit`.
commit_id() {
	local id
	id=$(tail -n1 "$B/log/$1.out" 2>/dev/null || true)
	if [[ $id =~ ^[0-9a-f]{64}$ ]]; then echo "$id"; else echo NONE; fi
}

json_field() { # file field -> integer value from sim's --json output
	grep -o "\"$2\"[[:space:]]*:[[:space:]]*[0-9]*" "$1" 2>/dev/null | head -n1 | grep -o '[0-9]*$' || echo "?"
}

# ostree refuses device nodes outright ("Not a regular file or symlink", and
# --skip-list is applied only after that check), and every root fs has some in
# /dev. So commit with an empty tmpfs over DIR/dev, mounted in a private mount
# namespace: the corpus and the host never see it, and it is gone on exit.
# shellcheck disable=SC2016 # $1/$2 are for the inner shell
OSTREE_COMMIT=(unshare -m --propagation private sh -c
	'mount -t tmpfs -o mode=755 tmpfs "$2/dev" && exec ostree --repo="$1" commit --branch=img --tree=dir="$2"' _)
# tar --xattrs --acls on both sides: sim keeps xattrs and ACLs, so must its peer.
# shellcheck disable=SC2016
TAR_ZST=(bash -c 'set -o pipefail; tar --xattrs --acls -C "$1" -cf - . | zstd -q -3 -T0 >"$2"' _)
# shellcheck disable=SC2016
UNTAR_ZST=(bash -c 'set -o pipefail; mkdir -p "$2" &&
	zstd -q -d -T0 <"$1" | tar --xattrs --acls --numeric-owner -xpf - -C "$2"' _)
export RESTIC_PASSWORD=sim-bench RESTIC_REPOSITORY=$B/restic RESTIC_CACHE_DIR=$B/restic-cache
RESTIC_BACKUP=(restic -q backup --host bench)

# Entries of DIR that differ from SRC in content or metadata (rsync's itemized
# dry run with checksums; hardlinks, ACLs, xattrs, devices, times included).
differ() { # src dir name -> count, list kept in log/NAME.diff
	rsync -n -aHAXc --delete --itemize-changes "$1/" "$2/" >"$B/log/$3.diff" 2>&1 || true
	wc -l <"$B/log/$3.diff"
}

du_disk() { if [ -d "$1" ]; then du -s --block-size=1 "$1" | cut -f1; else echo FAIL; fi; }
du_app() { if [ -d "$1" ]; then du -s --apparent-size --block-size=1 "$1" | cut -f1; else echo FAIL; fi; }

# ------------------------------------------- 1 + 6: commit v1, new stores ---
log "== commit v1 into empty stores ($RUNS run(s) each)"
# Each reset makes a new, empty store (untimed); the last one is kept and
# receives v2 and v3 below.
reset_sim_c1() {
	rm -rf "$B/sim"
	"${SIMC[@]}" init >"$B/log/sim_init.out" 2>&1 || die "sim init failed: $(cat "$B/log/sim_init.out")"
}
reset_casync_c1() { rm -rf "$B/casync" && mkdir -p "$B/casync"; }
reset_tar_c1() { rm -f "$B/tar/v1.tar.zst"; }
reset_restic_c1() { rm -rf "$B/restic" "$B/restic-cache" && restic -q init >"$B/log/restic_init.out"; }
reset_ostree_c1() { rm -rf "$B/ostree" && ostree --repo="$B/ostree" init --mode=archive; }
warm_sim_c1=("$V1") warm_casync_c1=("$V1") warm_tar_c1=("$V1") warm_restic_c1=("$V1") warm_ostree_c1=("$V1")
cmd_sim_c1=("${SIMC[@]}" commit "$V1" --image bench -m v1)
cmd_casync_c1=(casync make --store="$B/casync/store.castr" "$B/casync/v1.caidx" "$V1")
cmd_tar_c1=("${TAR_ZST[@]}" "$V1" "$B/tar/v1.tar.zst")
cmd_restic_c1=("${RESTIC_BACKUP[@]}" "$V1")
cmd_ostree_c1=("${OSTREE_COMMIT[@]}" "$B/ostree" "$V1")
rounds "$RUNS" sim_c1 casync_c1 tar_c1 restic_c1 ostree_c1

# ------------------------------------------ 3: store size after v1, v2, v3 ---
log "== commit v2 and v3 on top"
for v in 2 3; do
	src=$CORPUS/v$v
	WARM=("$src")
	run "sim_c$v" "${SIMC[@]}" commit "$src" --image bench -m "v$v"
	run "casync_c$v" casync make --store="$B/casync/store.castr" "$B/casync/v$v.caidx" "$src"
	run "tar_c$v" "${TAR_ZST[@]}" "$src" "$B/tar/v$v.tar.zst"
	run "restic_c$v" "${RESTIC_BACKUP[@]}" "$src"
	run "ostree_c$v" "${OSTREE_COMMIT[@]}" "$B/ostree" "$src"
done
ID1=$(commit_id sim_c1) ID2=$(commit_id sim_c2) ID3=$(commit_id sim_c3)
OSTREE_V2=$(tail -n1 "$B/log/ostree_c2.out" 2>/dev/null || true)
declare -A DISK APP
for s in sim casync restic ostree tar; do
	DISK[$s]=$(du_disk "$B/$s") APP[$s]=$(du_app "$B/$s")
done
log "store sizes (disk bytes): sim ${DISK[sim]} casync ${DISK[casync]} restic ${DISK[restic]} ostree ${DISK[ostree]} tar ${DISK[tar]}"

TAG_OK=yes
for tag in "v1 $ID1" "v2 $ID2" "v3 $ID3"; do
	# shellcheck disable=SC2086 # split "name id" on purpose
	"${SIMC[@]}" tag $tag >>"$B/log/sim_tag.out" 2>&1 || TAG_OK=no
done

# ----------------------------------------------- 2: re-commit unchanged v3 ---
log "== re-commit unchanged v3 (3 runs, median)"
reset_sim_rc() { :; }
reset_restic_rc() { :; }
warm_sim_rc=("$V3" "$B/sim") warm_restic_rc=("$V3" "$B/restic" "$B/restic-cache")
cmd_sim_rc=("${SIMC[@]}" commit "$V3" --image bench -m v3-again)
cmd_restic_rc=("${RESTIC_BACKUP[@]}" "$V3")
rounds 3 sim_rc restic_rc

# ------------------------------------------ 4: checkout v2 into empty dir ---
log "== checkout v2 into an empty directory ($RUNS run(s) each)"
# The target must not exist before each run (a fresh install; ostree even
# insists on it).
reset_sim_co() { rm -rf "$B/co/sim"; }
reset_tar_co() { rm -rf "$B/co/tar"; }
reset_casync_co() { rm -rf "$B/co/casync"; }
reset_ostree_co() { rm -rf "$B/co/ostree"; }
reset_restic_co() { rm -rf "$B/co/restic"; }
warm_sim_co=("$B/sim") warm_tar_co=("$B/tar/v2.tar.zst") warm_casync_co=("$B/casync")
warm_ostree_co=("$B/ostree") warm_restic_co=("$B/restic" "$B/restic-cache")
cmd_sim_co=("${SIMC[@]}" checkout "$ID2" "$B/co/sim" --json)
cmd_tar_co=("${UNTAR_ZST[@]}" "$B/tar/v2.tar.zst" "$B/co/tar")
cmd_casync_co=(casync extract --store="$B/casync/store.castr" "$B/casync/v2.caidx" "$B/co/casync")
cmd_ostree_co=(ostree --repo="$B/ostree" checkout "$OSTREE_V2" "$B/co/ostree")
cmd_restic_co=(restic -q restore latest --path "$V2" --target "$B/co/restic")
rounds "$RUNS" sim_co tar_co casync_co ostree_co restic_co
DIFF_SIM_CO=$(ok sim_co && differ "$V2" "$B/co/sim" sim_co || echo "n/a")
DIFF_TAR_CO=$(ok tar_co && differ "$V2" "$B/co/tar" tar_co || echo "n/a")
rm -rf "$B/co" # ~1 GB of page cache and disk we no longer need

# ----------------------------------------- 5: in-place rollback v3 -> v2 ---
log "== in-place rollback v3 -> v2 (3 runs, median)"
RB_SIM=$B/rb/sim RB_RSYNC=$B/rb/rsync
# Both start from a full copy of v3; before every timed run the copy is put
# back to v3 (untimed; a no-op the first time).
"${SIMC[@]}" checkout "$ID3" "$RB_SIM" >"$B/log/sim_rb_setup.out" 2>&1 || log "sim checkout v3 (rollback setup) failed"
cp -a "$V3" "$RB_RSYNC"
reset_sim_rb() { "${SIMC[@]}" checkout "$ID3" "$RB_SIM" >>"$B/log/sim_rb_setup.out" 2>&1 || true; }
reset_rsync_rb() { rsync -aHAX --delete "$V3/" "$RB_RSYNC/"; }
warm_sim_rb=("$B/sim" "$RB_SIM") warm_rsync_rb=("$V2" "$RB_RSYNC")
cmd_sim_rb=("${SIMC[@]}" checkout "$ID2" "$RB_SIM" --json)
cmd_rsync_rb=(rsync -aHAX --delete --stats "$V2/" "$RB_RSYNC/")
rounds 3 sim_rb rsync_rb
SIM_WRITTEN=$(json_field "$B/log/sim_rb_1.out" written)
SIM_REMOVED=$(json_field "$B/log/sim_rb_1.out" removed)
SIM_META=$(json_field "$B/log/sim_rb_1.out" metadata)
for i in 2 3; do # report it if runs disagree
	w=$(json_field "$B/log/sim_rb_$i.out" written)
	[ "$w" = "$SIM_WRITTEN" ] || SIM_WRITTEN="$SIM_WRITTEN/$w"
done
RSYNC_XFER=$(sed -n 's/^Number of regular files transferred: //p' "$B/log/rsync_rb_1.out" | tr -d ,)
DIFF_SIM_RB=$(ok sim_rb && differ "$V2" "$RB_SIM" sim_rb || echo "n/a")

# ------------------------------------------------------------- fsck / gc ---
log "== sim fsck, sim gc"
WARM=("$B/sim")
run sim_fsck "${SIMC[@]}" fsck
run sim_gc "${SIMC[@]}" gc

# ------------------------------------------------------------------ table ---
s() { # seconds (median, and the range when there were several runs), or FAIL
	local v=${T[$1]:-FAIL}
	[ "$v" = FAIL ] && { echo FAIL; return; }
	awk -v x="$v" -v lo="${LO[$1]:-}" -v hi="${HI[$1]:-}" 'function f(t) { return sprintf(t < 10 ? "%.3f" : "%.1f", t) }
		BEGIN { printf "%s s", f(x); if (lo != "" && lo != hi) printf " (%s–%s)", f(lo), f(hi) }'
}
mb() { awk -v x="$1" 'BEGIN { if (x == "FAIL") print "FAIL"; else printf "%.1f MB", x / 1e6 }'; }
rss() { # KiB -> MB (10^6 bytes)
	local v=${RSS[$1]:-FAIL}
	[ "$v" = FAIL ] && { echo FAIL; return; }
	awk -v x="$v" 'BEGIN { printf "%.0f MB", x * 1024 / 1e6 }'
}
ratio() { # a b -> a/b formatted
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "FAIL" || b == "FAIL" || b == 0) print "—"; else printf "%.2f×", a / b }'
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "FAIL" && b != "FAIL" && a + 0 <= b + 0) }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "FAIL" && b != "FAIL" && a + 0 < b + 0) }'; }
verdict() { if "$@"; then echo "✅ met"; else echo "❌ missed"; fi; }

# 1. commit v1
if ! ok sim_c1; then v1res="❌ sim failed"
elif le "${T[sim_c1]}" "${T[tar_c1]}"; then v1res="✅ stretch met"
elif le "${T[sim_c1]}" "${T[casync_c1]}"; then v1res="✅ met"
else v1res="❌ missed"; fi
# 2. re-commit
rcres=$(verdict le "${T[sim_rc]}" 0.1)
# 3. size (judged on disk usage)
if [ "$(commit_id sim_c3)" = NONE ]; then szres="❌ sim failed"
elif le "${DISK[sim]}" 100000000; then szres="✅ stretch met"
elif le "${DISK[sim]}" 120000000; then szres="✅ met"
else szres="❌ missed"; fi
# 4. checkout
if ok sim_co && ok tar_co && le "$(awk -v a="${T[sim_co]}" -v b="${T[tar_co]}" 'BEGIN { print a / b }')" 1.2; then
	cores="✅ met"
else cores="❌ missed"; fi
# 5. rollback
if lt "${T[sim_rb]}" "${T[rsync_rb]}" && [ "$SIM_WRITTEN" = 2 ]; then rbres="✅ met"; else rbres="❌ missed"; fi
# 6. RSS
rssres=$(verdict le "${RSS[sim_c1]:-FAIL}" $((300 * 1000000 / 1024)))
# 7. fidelity
if [ "$DIFF_SIM_CO" = 0 ] && [ "$DIFF_SIM_RB" = 0 ]; then fidres="✅ met"; else fidres="❌ missed"; fi

row() { printf '| %s ' "$@"; echo '|'; } # cells may contain \| (escaped pipe)

table() {
	echo "### sim benchmark — $(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(df --output=fstype "$B" 2>/dev/null | tail -n1 || echo '?') scratch"
	echo
	echo "| # | measurement | sim | peer | sim/peer | target | result | other peers (info) |"
	echo "|---|---|---|---|---|---|---|---|"
	row 1 "commit v1 into a new store (wall$([ "$RUNS" -gt 1 ] && echo ", median of $RUNS"))" "$(s sim_c1)" "casync make $(s casync_c1)" \
		"$(ratio "${T[sim_c1]}" "${T[casync_c1]}")" "≤ casync; stretch ≤ tar\|zstd" "$v1res" \
		"tar\|zstd $(s tar_c1) ($(ratio "${T[sim_c1]}" "${T[tar_c1]}")); restic $(s restic_c1); ostree $(s ostree_c1)"
	row 2 "re-commit unchanged v3 (median of 3)" "$(s sim_rc)" "restic re-backup $(s restic_rc)" \
		"$(ratio "${T[sim_rc]}" "${T[restic_rc]}")" "≤ 0.1 s" "$rcres" \
		"first v3 commit: sim $(s sim_c3), restic $(s restic_c3), casync $(s casync_c3), ostree $(s ostree_c3)"
	row 3 "store size after v1+v2+v3 (disk; apparent)" "$(mb "${DISK[sim]}"); $(mb "${APP[sim]}")" \
		"restic $(mb "${DISK[restic]}"); $(mb "${APP[restic]}")" "$(ratio "${DISK[sim]}" "${DISK[restic]}")" \
		"≤ 120 MB; stretch ≤ 100 MB" "$szres" \
		"ostree archive $(mb "${DISK[ostree]}"); $(mb "${APP[ostree]}") · casync $(mb "${DISK[casync]}"); $(mb "${APP[casync]}") · 3× tar.zst $(mb "${DISK[tar]}")"
	row 4 "checkout v2 into an empty dir$([ "$RUNS" -gt 1 ] && echo " (median of $RUNS)")" "$(s sim_co)" "zstd -d \| tar -x $(s tar_co)" \
		"$(ratio "${T[sim_co]}" "${T[tar_co]}")" "≤ 1.2×" "$cores" \
		"casync extract $(s casync_co); ostree checkout $(s ostree_co); restic restore $(s restic_co)"
	row 5 "in-place rollback v3→v2 (median of 3)" "$(s sim_rb), written $SIM_WRITTEN (removed $SIM_REMOVED, metadata $SIM_META)" \
		"rsync -aHAX --delete $(s rsync_rb), ${RSYNC_XFER:-?} files" "$(ratio "${T[sim_rb]}" "${T[rsync_rb]}")" \
		"faster than rsync; written = 2" "$rbres" "—"
	row 6 "peak RSS, commit v1" "$(rss sim_c1)" "restic $(rss restic_c1)" \
		"$(ratio "${RSS[sim_c1]:-FAIL}" "${RSS[restic_c1]:-FAIL}")" "≤ 300 MB" "$rssres" \
		"casync $(rss casync_c1); tar\|zstd $(rss tar_c1) (largest process); ostree $(rss ostree_c1)"
	row 7 "entries differing from v2 after checkout / after rollback" "$DIFF_SIM_CO / $DIFF_SIM_RB" \
		"tar: $DIFF_TAR_CO / —" "—" "0 / 0" "$fidres" "rsync -n -aHAXc --delete --itemize-changes"
	row 8 "sim fsck / sim gc (info)" "$(s sim_fsck) / $(s sim_gc)" "—" "—" "—" "—" "sim tag: $TAG_OK"
	echo
	echo "Warm page cache: every timed command starts after \`sync\` and an untimed read of its inputs (source tree, or store and target), since this VM pages out cache idle for ~6 s (DAMON); caches are never dropped."
	echo "Repeated measurements interleave the contenders, rotating their order each round; cells show the median (min–max). BENCH_RUNS=$RUNS."
	echo "Wall time via \`date +%s.%N\`, peak RSS via \`/usr/bin/time -f %M\` (KiB → MB = 10^6 bytes; for a pipeline its largest process)."
	echo "Store size: \`du -s -B1\` (disk) and \`du -sb\` (apparent), MB = 10^6 bytes; casync includes its 3 .caidx, ostree is an archive-mode repo."
	echo "Tools at defaults: $(restic version | awk '{ print "restic", $2 }'), casync $(casync --version 2>&1 | awk '{ print $NF; exit }'), ostree $(ostree --version | awk -F"'" '/Version/ { print $2 }'), $(zstd -V | grep -o 'v[0-9.]*' | head -n1 | sed 's/^/zstd /'), $(tar --version | awk '{ print "tar", $NF; exit }'), $(rsync --version | awk '{ print "rsync", $3; exit }'). ostree got an empty tmpfs over /dev (it rejects device nodes)."
	echo "Corpus (testdata/mkcorpus.sh): $("$ROOT/testdata/mkcorpus.sh" "$CORPUS" | sed 's/, built in [0-9.]*s//' | paste -sd ';' | sed 's/;/; /g')."
	if [ "${#FAILED[@]}" -gt 0 ]; then echo "FAILED steps: ${FAILED[*]}."; fi
}

table | tee "$RESULTS.tmp"
mv -f "$RESULTS.tmp" "$RESULTS"
log "table written to $RESULTS"
[ "${#FAILED[@]}" -eq 0 ] || exit 1
