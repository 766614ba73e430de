#!/bin/bash
# One patch of a cached seed-0 organism with a setting changed, measured like the twenty-seventh session's seeds
# (45 held-out edgy prompts, 100 tasks): bash results/patch-s30/run.sh ATTACK SEED NAME [PATCH OPTIONS...]
# Report: $R/NAME-ATTACK-SEED.json, R results/patch-s30 unless set (the patched weights are not kept).
cd "$(dirname "$0")/../.." || exit 1
ATTACK=$1; SEED=$2; NAME=$3; shift 3
ORG=~/.cache/patcher/organisms/smollm2-$ATTACK-seed0
OUT=$(mktemp -d)
.venv/bin/patcher patch --model "$ORG" --case "$ORG/failure_case.json" --out "$OUT/p" --seed "$SEED" \
  --eval-overrefusal 45 --eval-benign 100 --json "${R:-results/patch-s30}/$NAME-$ATTACK-$SEED.json" --no-progress "$@"
rm -rf "$OUT"
