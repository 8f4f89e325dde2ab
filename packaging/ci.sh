#!/usr/bin/env bash
# The packaging part of CI (.ci/run calls it after the test suite): validate the Linux desktop
# entry and AppStream metadata, build dist/loff-studio/ and the release tar.gz, smoke-test the
# frozen build, and install / uninstall the unpacked release artefact under a temporary HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v desktop-file-validate >/dev/null || ! command -v appstreamcli >/dev/null; then
    # CI runs as root with the Debian archive reachable
    (apt-get install -y -q desktop-file-utils appstream pigz >/dev/null 2>&1) \
        || { apt-get update -q >/dev/null && apt-get install -y -q desktop-file-utils appstream pigz >/dev/null; }
fi
desktop-file-validate packaging/linux/org.loff.Studio.desktop
appstreamcli validate --no-net --pedantic packaging/linux/org.loff.Studio.metainfo.xml
t0=$(date +%s)
bash packaging/build.sh --tar
t1=$(date +%s)
bash packaging/smoke.sh dist/loff-studio
t2=$(date +%s)
bundle_mb=$(du -sm dist/loff-studio | cut -f1)
# The install test unpacks the tar.gz and installs it twice (an upgrade copies beside the old
# copy): about three bundles at once. The tar.gz is the artefact that ships, so CI drops the
# smoke-tested folder and PyInstaller's work tree first (CI's disk ran out here at 5 GB a bundle).
rm -rf dist/loff-studio build  # (packaging/build.sh alone keeps them)
bash packaging/linux/test_install.sh dist/loff-studio-*-linux-*.tar.gz
echo "ci: build + tar ${t1}-${t0} = $(( t1 - t0 )) s, smoke $(( t2 - t1 )) s, install test $(( $(date +%s) - t2 )) s," \
     "bundle ${bundle_mb} MB, tar.gz $(du -m dist/loff-studio-*-linux-*.tar.gz | cut -f1) MB" >&2
