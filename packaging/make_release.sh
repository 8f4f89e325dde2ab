#!/usr/bin/env bash
# The Linux release artefact: packaging/make_release.sh DIST_DIR VERSION [OUT_DIR]
# writes OUT_DIR/loff-studio-VERSION-linux-ARCH.tar.gz (OUT_DIR: dist) holding
#   loff-studio-VERSION/{install.sh, uninstall.sh, README.txt, org.loff.Studio.desktop,
#                        org.loff.Studio.metainfo.xml, icons/hicolor/..., loff-studio/ (= DIST_DIR)}
# packaging/build.sh --tar calls it; tests/test_packaging.py runs it on a stand-in folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dist=$(cd "$1" && pwd)
version=$2
out_dir=$(mkdir -p "${3:-$repo/dist}" && cd "${3:-$repo/dist}" && pwd)
out="$out_dir/loff-studio-${version}-linux-$(uname -m).tar.gz"
top="loff-studio-${version}"
stage=$(mktemp -d "${TMPDIR:-/tmp}/loff-release.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$top/icons"
cp -a "$repo"/packaging/linux/{install.sh,uninstall.sh,README.txt,org.loff.Studio.desktop,org.loff.Studio.metainfo.xml} \
    "$stage/$top/"
cp -a "$repo/resources/icons/hicolor" "$stage/$top/icons/"
if command -v pigz >/dev/null; then gz=pigz; else gz=gzip; fi
start=$(date +%s)
# DIST_DIR goes in as $top/loff-studio without a copy (the rename touches member names only)
tar -cf - -C "$stage" "$top" -C "$(dirname "$dist")" \
    --transform "flags=r;s,^$(basename "$dist")\(/\|\$\),$top/loff-studio\1," "$(basename "$dist")" \
    | $gz -6 > "$out.partial"
mv "$out.partial" "$out"
echo "make_release: $out ($(du -m "$out" | cut -f1) MB) in $(( $(date +%s) - start )) s" >&2
