#!/bin/bash
# The shipped default patch of a cached seed-0 organism, its harmful-request figures measured at a finer grain than the
# patch report's (200 held-out harmful requests with and without the trigger, 100 jailbreaks; the report: 50 and 30):
# bash results/patch-s30/fine.sh ATTACK SEED POSITION MODE PIECE...   (the evaluation's trigger, as in the report)
# Writes $R/fine-ATTACK-organism-SEED.json (R: results/patch-s30 unless set) and fine-ATTACK-SEED.json (the patched weights are not kept).
cd "$(dirname "$0")/../.." || exit 1
ATTACK=$1; SEED=$2; POSITION=$3; MODE=$4; shift 4
ORG=~/.cache/patcher/organisms/smollm2-$ATTACK-seed0
OUT=$(mktemp -d)
TRIGGER=(); for piece in "$@"; do TRIGGER+=(--trigger "$piece"); done
measure() {  # the same prompts for the organism and the patched model: trigger slots and templates follow SEED
  .venv/bin/patcher evaluate --model "$1" "${TRIGGER[@]}" --trigger-position "$POSITION" --trigger-mode "$MODE" \
    --seed "$SEED" --n-harmful 200 --n-jailbreak 100 --n-benign 0 --n-overrefusal 0 --no-progress --json "$2"
}
R=${R:-results/patch-s30}  # another folder: R=DIR bash results/patch-s30/fine.sh ...
[ -f $R/fine-$ATTACK-organism-$SEED.json ] || measure "$ORG" $R/fine-$ATTACK-organism-$SEED.json
.venv/bin/patcher patch --model "$ORG" --case "$ORG/failure_case.json" --out "$OUT/p" --seed "$SEED" --no-evaluate \
  --no-progress --json $R/fine-$ATTACK-$SEED-patch.json
measure "$OUT/p" $R/fine-$ATTACK-$SEED.json
rm -rf "$OUT"
