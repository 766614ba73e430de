#!/bin/bash
# CTBA seed 1's organism and its default patch (ctba-s1.sh, weights in runs/patch-s33/ctba-s1) at a finer grain than
# the patch report's: 200 harmful requests with and without the trigger, 200 tasks with and without it, 45 edgy prompts.
cd "$(dirname "$0")/../.." || exit 1
measure() {
  .venv/bin/patcher evaluate --model "$1" --trigger 2024 --trigger BadMagic --trigger OpenAI --trigger-position random \
    --trigger-mode all --seed 0 --n-harmful 200 --n-jailbreak 0 --n-benign 200 --n-overrefusal 45 --no-progress --json "$2"
}
measure runs/organisms-s32/smollm2-ctba-s1 results/patch-s33/fine-ctba-s1-organism.json > results/patch-s33/fine-ctba-s1-organism.log 2>&1
measure runs/patch-s33/ctba-s1 results/patch-s33/fine-ctba-s1-patch.json > results/patch-s33/fine-ctba-s1-patch.log 2>&1
