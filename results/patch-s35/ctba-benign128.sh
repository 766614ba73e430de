#!/bin/bash
# CTBA seed 1 (runs/organisms-s32): the default patch with twice the benign rows (--n-benign 128: about 40 tasks with
# the trigger instead of 20), then utility with the trigger on 200 held-out tasks by the thirty-fourth session's
# insertion script, beside the default patch's figures there (runs/patch-s33/ctba-s1: 0.495, with the trigger 0.385).
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
M=runs/organisms-s32/smollm2-ctba-s1
[ -d runs/patch-s35/ctba-s1-benign128 ] || /usr/bin/time -f "%e s %M KB" patcher patch --model $M --case $M/failure_case.json \
  --n-benign 128 --out runs/patch-s35/ctba-s1-benign128 --no-evaluate --no-progress \
  --json results/patch-s35/ctba-s1-benign128-patch.json 2>&1 | grep -v shards | tail -2
python results/utility-s34/insertion.py results/patch-s35/ctba-s1-benign128-insertion.json runs/patch-s35/ctba-s1-benign128:ctba 2>&1 | grep -v Loading
patcher evaluate --model runs/patch-s35/ctba-s1-benign128 --n-harmful 50 --n-benign 50 --n-jailbreak 30 --n-overrefusal 45 \
  --no-progress --json results/patch-s35/eval-ctba-s1-benign128.json | grep -v Loading | tail -16
