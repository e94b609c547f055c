#!/usr/bin/env bash
# deb-repack.sh IN.deb VERSION OUT.deb [NOTE]: the same package under another version, for upgrade
# tests (make deb-cycle: an older N to upgrade from; make image: a newer N+1 for the VM's upgrade).
# With NOTE, that line is appended to the shipped /etc/titus/*.toml (as if upstream changed the
# conffiles between the versions). Uncompressed: it only lives for the test.
set -euo pipefail
IN=$1 VERSION=$2 OUT=$3 NOTE=${4:-}
TMP=$(mktemp -d /var/tmp/titus-repack.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -R "$IN" "$TMP/pkg"
sed -i "s/^Version: .*/Version: $VERSION/" "$TMP/pkg/DEBIAN/control"
if [ -n "$NOTE" ]; then
    for f in "$TMP"/pkg/etc/titus/*.toml; do echo "$NOTE" >> "$f"; done
fi
(cd "$TMP/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
dpkg-deb -Znone -b "$TMP/pkg" "$OUT" >/dev/null
