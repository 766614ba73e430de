#!/bin/bash
# The default patch of a cached seed-0 organism, its benign figures at a finer grain than the patch report's: utility
# and utility with the trigger on all 200 held-out tasks (the report: 100), over-refusal on the 45 edgy prompts.
# bash results/patch-s31/fine-utility.sh ATTACK SEED POSITION MODE PIECE...   (the evaluation's trigger, as in the report)
# Writes results/patch-s31/utility-ATTACK-organism.json, utility-ATTACK-SEED.json and utility-ATTACK-SEED-patch.json.
cd "$(dirname "$0")/../.." || exit 1
ATTACK=$1; SEED=$2; POSITION=$3; MODE=$4; shift 4
ORG=~/.cache/patcher/organisms/smollm2-$ATTACK-seed0
OUT=$(mktemp -d)
TRIGGER=(); for piece in "$@"; do TRIGGER+=(--trigger "$piece"); done
measure() {  # the tasks and edgy prompts do not depend on the seed: one organism measurement serves every patch seed
  .venv/bin/patcher evaluate --model "$1" "${TRIGGER[@]}" --trigger-position "$POSITION" --trigger-mode "$MODE" \
    --seed 0 --n-harmful 0 --n-jailbreak 0 --n-benign 200 --n-overrefusal 45 --no-progress --json "$2"
}
R=results/patch-s31
[ -f $R/utility-$ATTACK-organism.json ] || measure "$ORG" $R/utility-$ATTACK-organism.json
.venv/bin/patcher patch --model "$ORG" --case "$ORG/failure_case.json" --out "$OUT/p" --seed "$SEED" --no-evaluate \
  --no-progress --json $R/utility-$ATTACK-$SEED-patch.json
measure "$OUT/p" $R/utility-$ATTACK-$SEED.json
rm -rf "$OUT"
