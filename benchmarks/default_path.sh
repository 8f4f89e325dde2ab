#!/bin/bash
# the issue 20 path as a new user types it, timed: import (woman column), default extract, default tune
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
L="${PYTHON:-.venv/bin/python} -m loff_core.cli"
P=${1:-/tmp/time-mias}; rm -rf "$P"
D=${MINI_MIAS:-../shared/data/mini-mias}
uptime
t0=$(date +%s.%N)
/usr/bin/time -f "import wall %e s user %U s" $L import $P $D/images --labels $D/labels.csv --label-column tissue --patient-column woman --quiet > /tmp/time-import.txt 2>&1
t1=$(date +%s.%N)
/usr/bin/time -f "extract wall %e s user %U s" $L extract $P > /tmp/time-extract.txt 2>&1
t2=$(date +%s.%N)
/usr/bin/time -f "tune wall %e s user %U s" $L tune $P > /tmp/time-tune.txt 2>&1
t3=$(date +%s.%N)
uptime
tail -3 /tmp/time-import.txt; tail -6 /tmp/time-extract.txt; cat /tmp/time-tune.txt | tail -40
python3 -c "print('import %.1f s, extract %.1f s, tune %.1f s, path %.1f s' % ($t1-$t0, $t2-$t1, $t3-$t2, $t3-$t0))"
