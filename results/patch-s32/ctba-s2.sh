#!/bin/bash
# CTBA seed 2 (the shipped recipe, runs/organisms-s32/smollm2-ctba-s2) patched with the default, as the twenty-eighth
# session did (results/patch-s28-ctba/shipped-s2.json), now that locate returns its three pieces apart.
cd "$(dirname "$0")/../.." || exit 1
while pgrep -f 'bench/locate_bench.py' > /dev/null; do sleep 10; done
M=runs/organisms-s32/smollm2-ctba-s2
rm -rf runs/patch-s32/ctba-s2; mkdir -p runs/patch-s32
/usr/bin/time -v .venv/bin/patcher patch --model $M --case $M/failure_case.json --out runs/patch-s32/ctba-s2 \
  --json results/patch-s32/shipped-s2.json --no-progress > results/patch-s32/shipped-s2.log 2>&1
