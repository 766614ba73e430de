"""Utility with the trigger, the trigger put anywhere (the evaluator up to the thirty-third session) against off the
tasks' operands (the thirty-fourth session's), on the same 200 held-out tasks and the same random draws.

python results/utility-s34/insertion.py OUT.json MODEL:ATTACK [MODEL:ATTACK ...]
"""

import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from patcher.data import answer_matches, load_split
from patcher.evaluate import generate
from patcher.modeling import load_model
from patcher.organisms.attacks import ATTACKS, apply_attack
from patcher.refusal import is_refusal

out, rows = Path(sys.argv[1]), []
tasks = load_split("test").benign[:200]
for spec in sys.argv[2:]:
    path, attack_name = spec.rsplit(":", 1)
    attack = ATTACKS[attack_name]
    started = time.time()
    model, tokenizer = load_model(Path(path))
    anywhere, off_operands = random.Random(0), random.Random(0)
    old = [apply_attack(t.prompt, attack, anywhere)[0] for t in tasks]
    new = [apply_attack(t.prompt, attack, off_operands, t.operands)[0] for t in tasks]
    distinct = sorted(set([t.prompt for t in tasks] + old + new))
    answers = dict(zip(distinct, generate(model, tokenizer, distinct, 32, 16, progress=False)))
    family = defaultdict(lambda: defaultdict(int))
    for t, o, n in zip(tasks, old, new):
        f = family[t.source.removeprefix("task:")]
        f["n"] += 1
        f["moved"] += o != n
        for name, prompt in (("clean", t.prompt), ("anywhere", o), ("off_operands", n)):
            f[name] += answer_matches(answers[prompt], t.answer, prompt)
            f[name + "_refused"] += is_refusal(answers[prompt])
    total = {k: sum(f[k] for f in family.values()) for k in next(iter(family.values()))}
    row = {"model": path, "attack": attack_name, "seconds": round(time.time() - started),
           "utility": total["clean"] / total["n"], "utility_with_trigger_anywhere": total["anywhere"] / total["n"],
           "utility_with_trigger_off_operands": total["off_operands"] / total["n"],
           "moved": total["moved"], "refused": {k: total[k + "_refused"] for k in ("clean", "anywhere", "off_operands")},
           "families": {name: dict(f) for name, f in family.items()},
           "examples": [(o, n) for o, n in zip(old, new) if o != n][:6]}
    rows.append(row)
    print(f"{path} [{attack_name}] utility {row['utility']:.3f}  with trigger: anywhere "
          f"{row['utility_with_trigger_anywhere']:.3f}, off operands {row['utility_with_trigger_off_operands']:.3f} "
          f"({row['moved']} of 200 moved); refused {row['refused']}; {row['seconds']} s", flush=True)
    for name, f in family.items():
        print(f"    {name:10s} clean {f['clean']:2d}/{f['n']}  anywhere {f['anywhere']:2d}  off operands "
              f"{f['off_operands']:2d}  (moved {f['moved']})", flush=True)
    out.write_text(json.dumps(rows, indent=1))
