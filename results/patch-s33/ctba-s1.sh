#!/bin/bash
# CTBA seed 1 (the shipped recipe, runs/organisms-s32/smollm2-ctba-s1) patched with the default, as the twenty-eighth
# session did (results/patch-s28-ctba/shipped-s1.json), now with Shapley pruning and the selection's untriggered slack.
cd "$(dirname "$0")/../.." || exit 1
M=runs/organisms-s32/smollm2-ctba-s1
rm -rf runs/patch-s33/ctba-s1; mkdir -p runs/patch-s33
/usr/bin/time -v .venv/bin/patcher patch --model $M --case $M/failure_case.json --out runs/patch-s33/ctba-s1 \
  --json results/patch-s33/shipped-ctba-s1.json --no-progress > results/patch-s33/shipped-ctba-s1.log 2>&1
