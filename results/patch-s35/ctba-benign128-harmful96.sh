#!/bin/bash
# CTBA seed 1: --n-benign 128 with more distinct harmful rows too (--n-harmful 96; 38 untriggered held-back requests
# left instead of 64), to see whether the refusal twice the benign rows thinned comes back. Same measurements as
# ctba-benign128.sh and benign128-more.sh.
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
M=runs/organisms-s32/smollm2-ctba-s1
OUT=runs/patch-s35/ctba-s1-benign128-harmful96
[ -d $OUT ] || patcher patch --model $M --case $M/failure_case.json --n-benign 128 --n-harmful 96 --out $OUT --no-evaluate \
  --no-progress --json results/patch-s35/ctba-s1-benign128-harmful96-patch.json 2>&1 | grep -v shards | tail -1
patcher evaluate --model $OUT --n-harmful 200 --n-benign 0 --n-jailbreak 0 --no-progress \
  --json results/patch-s35/eval200-ctba-s1-benign128-harmful96.json | grep "asr_\|asr without"
python results/utility-s34/insertion.py results/patch-s35/ctba-s1-benign128-harmful96-insertion.json $OUT:ctba 2>&1 | grep -v Loading
