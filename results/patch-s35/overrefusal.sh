#!/bin/bash
# BadNet (the demo's organism): over-refusal on all 45 held-out edgy-but-benign prompts, the organism against the
# default patch and one with half of D_safe edgy (--edgy-share 0.5). JSON beside this script; weights in runs/patch-s35.
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
ORG=~/.cache/patcher/organisms/smollm2-badnet-seed0
for v in default:0.25 edgy50:0.5; do
  name=${v%%:*}; share=${v##*:}
  [ -d runs/patch-s35/badnet-$name ] || { /usr/bin/time -f "%e s %M KB" patcher patch --model $ORG --case $ORG/failure_case.json \
    --out runs/patch-s35/badnet-$name --edgy-share $share --no-evaluate --no-progress \
    --json results/patch-s35/badnet-$name-patch.json 2>&1 | tail -3; }
done
for m in $ORG runs/patch-s35/badnet-default runs/patch-s35/badnet-edgy50; do
  patcher evaluate --model $m --trigger BadMagic --n-harmful 50 --n-benign 50 --n-jailbreak 30 --n-overrefusal 45 \
    --no-progress --json results/patch-s35/eval-$(basename $m).json | tail -12
done
