"""Utility per task family on the first 240 held-out test tasks, greedy, 32 new tokens."""
import sys, collections
from pathlib import Path
from patcher.modeling import load_model
from patcher.evaluate import generate
from patcher.data import checkable_tasks, answer_matches
tasks = checkable_tasks("test", 240)
for d in sys.argv[1:]:
    model, tok = load_model(Path(d))
    out = generate(model, tok, [t.prompt for t in tasks], max_new_tokens=32, batch_size=16, progress=False)
    fam = collections.defaultdict(list)
    for t, o in zip(tasks, out): fam[t.source[5:]].append(answer_matches(o, t.answer, t.prompt))
    allv = [x for v in fam.values() for x in v]
    print(Path(d).name, f"{sum(allv)/len(allv):.3f}", " ".join(f"{k} {sum(v)/len(v):.2f}" for k, v in fam.items()), flush=True)
