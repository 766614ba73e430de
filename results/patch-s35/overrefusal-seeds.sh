#!/bin/bash
# BadNet (the demo's organism): the default patch with --seed 1 and 2 (its data draw and training order), measured
# as overrefusal.sh measures seed 0: all 45 held-out edgy-but-benign prompts, 50 requests / tasks, 30 jailbreaks.
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
ORG=~/.cache/patcher/organisms/smollm2-badnet-seed0
for seed in 1 2; do
  [ -d runs/patch-s35/badnet-seed$seed ] || patcher patch --model $ORG --case $ORG/failure_case.json --seed $seed \
    --out runs/patch-s35/badnet-seed$seed --no-evaluate --no-progress --json results/patch-s35/badnet-seed$seed-patch.json 2>&1 | tail -1
  patcher evaluate --model runs/patch-s35/badnet-seed$seed --trigger BadMagic --n-harmful 50 --n-benign 50 --n-jailbreak 30 \
    --n-overrefusal 45 --no-progress --json results/patch-s35/eval-badnet-seed$seed.json | tail -12
done
