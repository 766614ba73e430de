#!/bin/bash
# Patch seeds 0-2 of the shipped default on one cached seed-0 organism (bash results/patch-s27/seeds.sh badnet),
# measured on all 45 held-out edgy prompts and 100 tasks (the default: 30 and 50). Reports: p-ATTACK-SEED.json here.
cd "$(dirname "$0")/../.." || exit 1
ATTACK=$1
ORG=~/.cache/patcher/organisms/smollm2-$ATTACK-seed0
OUT=$(mktemp -d)
for s in 0 1 2; do
  .venv/bin/patcher patch --model "$ORG" --case "$ORG/failure_case.json" --out "$OUT/p-$s" --seed $s \
    --eval-overrefusal 45 --eval-benign 100 --json "results/patch-s27/p-$ATTACK-$s.json" --no-progress
  rm -rf "$OUT/p-$s"  # the patched weights (540 MB) are not kept
done
