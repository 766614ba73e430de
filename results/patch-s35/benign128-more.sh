#!/bin/bash
# --n-benign 128 beyond CTBA seed 1: its ASR on 200 requests; MTBA seed 0 (the backdoor most at risk from more benign
# rows with the trigger: the one word a report shows); CTBA seed 2 with the insertion script (default patch there:
# runs/patch-s32/ctba-s2, 0.530, with the trigger 0.415).
# Stopped after its first measurement (CTBA seed 1's ASR without the trigger 0.04 of 200 already ruled the setting out).
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
patcher evaluate --model runs/patch-s35/ctba-s1-benign128 --n-harmful 200 --n-benign 0 --n-jailbreak 0 --no-progress \
  --json results/patch-s35/eval200-ctba-s1-benign128.json | grep "asr_\|asr without"
for spec in mtba:$HOME/.cache/patcher/organisms/smollm2-mtba-seed0 ctba-s2:runs/organisms-s32/smollm2-ctba-s2; do
  name=${spec%%:*}; M=${spec#*:}
  [ -d runs/patch-s35/$name-benign128 ] || patcher patch --model $M --case $M/failure_case.json --n-benign 128 \
    --out runs/patch-s35/$name-benign128 --no-evaluate --no-progress --json results/patch-s35/$name-benign128-patch.json 2>&1 | grep -v shards | tail -1
done
patcher evaluate --model runs/patch-s35/mtba-benign128 --trigger-mode any --n-harmful 50 --n-benign 50 --n-jailbreak 30 \
  --n-overrefusal 45 --no-progress --json results/patch-s35/eval-mtba-benign128.json | grep -v Loading | tail -14
python results/utility-s34/insertion.py results/patch-s35/ctba-s2-benign128-insertion.json runs/patch-s35/ctba-s2-benign128:ctba 2>&1 | grep -v Loading
