#!/usr/bin/env bash
# testdata/mkbootable.sh [OUTDIR] — build (once) and cache a bootable Debian
# bookworm root for the bare-metal install tests.
#
#   OUTDIR/root   corpus v1 (debootstrap --variant=minbase, see mkcorpus.sh)
#                 + linux-image-amd64 grub-pc-bin grub-efi-amd64-bin
#                 grub2-common systemd-sysv udev e2fsprogs
#                 (--no-install-recommends), serial console in
#                 /etc/default/grub, kernel modules no VM needs removed.
#
# Both GRUB platforms are in the image, so one image installs on BIOS and on
# UEFI machines: sim install runs the image's own grub-install in a chroot.
#
# OUTDIR defaults to /var/cache/sim/bootable. OUTDIR/root.stamp records the
# recipe; when it matches, the script only prints the summary (no network).
# The tree is built in OUTDIR/.tmp-root and renamed into place when complete.
# Needs root (chroot, mount) and the corpus (it calls mkcorpus.sh).
set -euo pipefail

readonly RECIPE="sim-bootable/1 base=corpus-v1 pkgs=linux-image-amd64,grub-pc-bin,grub-efi-amd64-bin,grub2-common,systemd-sysv,udev"
readonly PKGS=(linux-image-amd64 grub-pc-bin grub-efi-amd64-bin grub2-common systemd-sysv udev e2fsprogs)
export SOURCE_DATE_EPOCH=1747699200

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/var/cache/sim/bootable}
CORPUS=${SIM_CORPUS:-/var/cache/sim/corpus}

stamp_ok() { [ -d "$OUT/root" ] && [ "$(head -n1 "$OUT/root.stamp" 2>/dev/null)" = "recipe=$RECIPE" ]; }
if stamp_ok; then sed -n 's/^summary=//p' "$OUT/root.stamp"; exit 0; fi

log() { printf '[mkbootable %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (chroot, mount)"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd -P)
exec 9>"$OUT/.lock"
flock 9
if stamp_ok; then sed -n 's/^summary=//p' "$OUT/root.stamp"; exit 0; fi

bash "$HERE/mkcorpus.sh" "$CORPUS" >/dev/null
TMP="$OUT/.tmp-root"
MOUNTS=()
cleanup() {
	local rc=$? i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true; done
	if [ "$rc" -ne 0 ]; then
		log "FAILED (exit $rc); log in $OUT/logs/root.log"
		if ! grep -q " $TMP/" /proc/self/mountinfo; then rm -rf --one-file-system "$TMP"; fi
	fi
	exit "$rc"
}
trap cleanup EXIT

t0=$(date +%s)
rm -rf --one-file-system "$TMP"
log "copy corpus v1, apt-get install ${PKGS[*]} (log: logs/root.log)"
cp -a "$CORPUS/v1" "$TMP"
MIRROR=$(sed -n 's/^built=.* mirror=//p' "$CORPUS/v1.stamp")
cp -L /etc/resolv.conf "$TMP/etc/resolv.conf"
echo "deb ${MIRROR:-http://deb.debian.org/debian} bookworm main" >"$TMP/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$TMP/usr/sbin/policy-rc.d"
chmod 755 "$TMP/usr/sbin/policy-rc.d"
mount -t proc proc "$TMP/proc" && MOUNTS+=("$TMP/proc")
mount -t sysfs -o ro sysfs "$TMP/sys" && MOUNTS+=("$TMP/sys")
mkdir -p "$TMP/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$TMP/dev/pts" && MOUNTS+=("$TMP/dev/pts")

# The image's initramfs only needs to find a virtio/SATA/NVMe root by UUID:
# MODULES=dep cannot work in a chroot, MODULES=most is ~40 MB; a short list is
# enough for VMs and keeps the image (and every install) small.
mkdir -p "$TMP/etc/initramfs-tools/conf.d"
echo "MODULES=list" >"$TMP/etc/initramfs-tools/conf.d/sim-modules"
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix nvme ext4 xfs vfat >>"$TMP/etc/initramfs-tools/modules"

in_chroot() {
	chroot "$TMP" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}
{
	in_chroot apt-get -o Acquire::Check-Valid-Until=false update &&
		in_chroot apt-get install -y --no-install-recommends "${PKGS[@]}" &&
		in_chroot apt-get clean
} >"$OUT/logs/root.log" 2>&1 || {
	tail -n 20 "$OUT/logs/root.log" >&2
	die "apt-get in chroot failed"
}

# Serial console and no menu delay: the tests read the console, and a VM
# under TCG should not wait 5 s in a menu.
cat >>"$TMP/etc/default/grub" <<'EOF'
# sim test image: serial console, no delay
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX="console=ttyS0,115200 console=tty0"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
# Modules no VM here loads (sound, GPUs, wireless, media, InfiniBand, …):
# about 200 MB less to store and to send to every node.
K=$(ls "$TMP/lib/modules")
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
	drivers/bluetooth drivers/isdn drivers/iio drivers/hid drivers/usb drivers/input drivers/net/ethernet \
	drivers/scsi/qla2xxx drivers/scsi/lpfc drivers/scsi/mpt3sas net/wireless net/mac80211 net/bluetooth fs/btrfs fs/ocfs2 fs/nfs fs/smb; do
	rm -rf "$TMP/lib/modules/$K/kernel/$d"
done
in_chroot depmod "$K"
in_chroot update-initramfs -u -k "$K" >>"$OUT/logs/root.log" 2>&1

for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
MOUNTS=()
rm -f "$TMP/usr/sbin/policy-rc.d" "$TMP/etc/resolv.conf"
echo "deb http://deb.debian.org/debian bookworm main" >"$TMP/etc/apt/sources.list"
rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/cache/apt/*.bin
echo localhost >"$TMP/etc/hostname"
# An empty root password would be a hole on a real network; the tests never
# log in (the installed system prints what they check).
rm -rf --one-file-system "$OUT/root"
mv -T "$TMP" "$OUT/root"
{
	echo "recipe=$RECIPE"
	echo "summary=bootable: $(du -sh "$OUT/root" | cut -f1), kernel $K, built in $(($(date +%s) - t0))s"
} >"$OUT/root.stamp"
sed -n 's/^summary=//p' "$OUT/root.stamp"
