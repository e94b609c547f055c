#!/usr/bin/env bash
# make deb: dist/titus-node_VERSION_ARCH.deb, built with dpkg-buildpackage from a copy of this
# tree plus packaging/debian, offline: every Python wheel comes from build/wheelhouse, which
# `make wheels` (the only networked step) fills from the pinned lock files. The result is then
# checked with lintian (no errors or warnings; overrides carry their reason).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS=build/wheelhouse
VERSION=$(dpkg-parsechangelog -l packaging/debian/changelog -SVersion)
SRC=build/deb/titus-node-$VERSION

if [ ! -f "$WHEELS/.complete" ] || [ packaging/requirements.lock -nt "$WHEELS/.complete" ]; then
    bash scripts/wheels.sh
fi
rm -rf build/deb
mkdir -p "$SRC" dist
git ls-files -co --exclude-standard -z | grep -zv -e '^packaging/debian/' -e '^dist/' -e '^build/' \
    | xargs -0 cp --parents -d -t "$SRC"
cp -a packaging/debian "$SRC/debian"
cp packaging/requirements.lock "$SRC/requirements.lock"
cp -a "$WHEELS" "$SRC/wheelhouse"
(cd "$SRC" && dpkg-buildpackage -b -us -uc --no-sign >../build.log 2>&1) || { tail -40 build/deb/build.log; exit 1; }
rm -f dist/titus-node_*.deb
mv build/deb/titus-node_*.deb dist/
DEB=$(ls dist/titus-node_*.deb)
echo "built $DEB ($(du -h "$DEB" | cut -f1), installed size $(dpkg-deb -f "$DEB" Installed-Size) KiB)"
lintian --fail-on error,warning --suppress-tags-from-file /dev/null "$DEB"
echo "lintian: clean"
