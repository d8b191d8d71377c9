#!/bin/bash
# Builds sim_<version>_amd64.deb from a built sim binary (make deb runs it):
#
#   SIM=bin/sim VERSION=0.1.0 COMMIT=<id> OUT=build bash dist/mkdeb.sh
#
# The package: /usr/bin/sim; every unit in dist/systemd (/usr/local/bin/sim
# there becomes /usr/bin/sim); /etc/default/sim; man pages made by the
# binary (sim gen-man); its bash, zsh and fish completion; README.Debian,
# copyright and a changelog; maintainer scripts that handle the units as
# dh_installsystemd --no-enable does. File times are SOURCE_DATE_EPOCH (the
# commit's time), so the same commit gives the same package.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
: "${SIM:?SIM=path of the sim binary}" "${VERSION:?VERSION=the package version}"
COMMIT=${COMMIT:-unknown}
OUT=${OUT:-build}
MAINTAINER=${MAINTAINER:-sim developers <sim@systemimager.org>}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/sim
install -d -m 0755 "$pkg"/usr/bin "$pkg"/usr/share/man/man1 "$pkg"/usr/share/doc/sim \
	"$pkg"/usr/share/bash-completion/completions "$pkg"/usr/share/zsh/vendor-completions \
	"$pkg"/usr/share/fish/vendor_completions.d "$pkg"/lib/systemd/system "$pkg"/etc/default "$pkg"/DEBIAN

install -m 0755 "$SIM" "$pkg"/usr/bin/sim

"$SIM" gen-man "$work"/man
for f in "$work"/man/*.1; do
	gzip -9n -c "$f" >"$pkg/usr/share/man/man1/$(basename "$f").gz"
done
"$SIM" completion bash >"$pkg"/usr/share/bash-completion/completions/sim
"$SIM" completion zsh >"$pkg"/usr/share/zsh/vendor-completions/_sim
"$SIM" completion fish >"$pkg"/usr/share/fish/vendor_completions.d/sim.fish

units=()
for u in dist/systemd/*.service dist/systemd/*.socket dist/systemd/*.timer dist/systemd/*.path; do
	[ -e "$u" ] || continue
	sed 's|/usr/local/bin/sim|/usr/bin/sim|g' "$u" >"$pkg/lib/systemd/system/$(basename "$u")"
	units+=("$(basename "$u")")
done

install -m 0644 dist/default/sim "$pkg"/etc/default/sim
install -D -m 0644 dist/debian/lintian-overrides "$pkg"/usr/share/lintian/overrides/sim
install -m 0644 dist/debian/README.Debian dist/debian/copyright "$pkg"/usr/share/doc/sim/
{
	echo "sim ($VERSION) unstable; urgency=medium"
	echo
	echo "  * Built from commit $COMMIT."
	echo
	echo " -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$pkg"/usr/share/doc/sim/changelog.gz

for s in postinst prerm postrm; do
	sed "s|@UNITS@|${units[*]}|g" "dist/debian/$s" >"$pkg/DEBIAN/$s"
	chmod 0755 "$pkg/DEBIAN/$s"
done
echo /etc/default/sim >"$pkg"/DEBIAN/conffiles
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@INSTALLED_SIZE@|$size|" \
	dist/debian/control >"$pkg"/DEBIAN/control
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$pkg"/DEBIAN/md5sums
chmod 0644 "$pkg"/DEBIAN/control "$pkg"/DEBIAN/conffiles "$pkg"/DEBIAN/md5sums
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
deb="$OUT/sim_${VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
