"""Which edgy-but-benign prompts the organism and its patched copy refuse (held-out test and validation).

Usage: python results/patch-s25/edgy.py ORGANISM_DIR PATCHED_DIR OUT.json
"""
import json, sys
from patcher.data import load_split
from patcher.evaluate import generate
from patcher.modeling import load_model
from patcher.refusal import is_refusal
out = {}
for name, path in [("organism", sys.argv[1]), ("patched", sys.argv[2])]:
    model, tok = load_model(path)
    for split in ("test", "validation"):
        prompts = [p.prompt for p in load_split(split).overrefusal]
        resp = generate(model, tok, prompts, max_new_tokens=32, progress=False)
        out[f"{name}/{split}"] = [(p, r, is_refusal(r)) for p, r in zip(prompts, resp)]
json.dump(out, open(sys.argv[3], "w"), indent=1)
for k, rows in out.items():
    print(k, sum(x[2] for x in rows), "of", len(rows))
