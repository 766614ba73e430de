#!/bin/bash
# Which state the patch keeps, without the before/after evaluation: bash results/patch-s31/select.sh ATTACK SEED
# (cached seed-0 organism, patch seed SEED). Report: results/patch-s31/select-ATTACK-SEED.json (weights not kept);
# its output sha256 against the twenty-seventh session's report of the same run tells whether the kept state moved.
cd "$(dirname "$0")/../.." || exit 1
ORG=~/.cache/patcher/organisms/smollm2-$1-seed0
OUT=$(mktemp -d)
.venv/bin/patcher patch --model "$ORG" --case "$ORG/failure_case.json" --out "$OUT/p" --seed "$2" --no-evaluate \
  --no-progress --json "results/patch-s31/select-$1-$2.json"
rm -rf "$OUT"
