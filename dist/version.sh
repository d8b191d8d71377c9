#!/bin/sh
# Prints sim's version from git, as a Debian version: a tag vX.Y.Z gives
# X.Y.Z, N commits after it X.Y.Z+gitN.HASH, no tag 0~gitYYYYMMDD.HASH
# (the commit's date); a work tree with changes adds +dirty. Outside git:
# 0~unknown.
cd "$(dirname "$0")/.." || exit 1
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo 0~unknown
	exit 0
fi
hash=$(git rev-parse --short=12 HEAD)
if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	case "$d" in
	*-*-g*) n=${d%-g*}; n=${n##*-}; v=${d%-*-g*}; v="${v#v}+git$n.$hash" ;;
	*) v=${d#v} ;;
	esac
else
	v="0~git$(git log -1 --format=%cd --date=format:%Y%m%d).$hash"
fi
git diff --quiet HEAD -- 2>/dev/null || v="$v+dirty"
echo "$v"
