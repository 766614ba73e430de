"""Prints the tiny locate figures of this run and checks them against the twenty-first session's.

Run from the checkout: python results/organism-s33-tiny/compare.py
"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
STANDARD = ("start", "end", "8word")  # placements and the 8-word phrase, beside the five attacks x 3 seeds


def name(row):
    # the twenty-first session's run named its organisms d-ATTACK-sS (d-badnet-8word-s0 ...)
    base = row["organism"].rstrip("/").split("/")[-1]
    return "tiny-" + base[2:] if base.startswith("d-") else base


new = json.loads((HERE / "locate-tiny.json").read_text())
old = {(name(r), r["case"], r["kind"], r["method"]): r
       for r in json.loads((HERE / "../locate/locate-bench-tiny-s21-recipe3.json").read_text())}
for method in ("ours", "ours-loo", "published"):
    rows = [r for r in new if r["method"] == method]
    backdoor = [r for r in rows if r["kind"] == "backdoor"]
    null = [r for r in rows if r["kind"] != "backdoor"]
    five = [r for r in backdoor if not any(s in name(r) for s in STANDARD)]
    print(f"{method}: F1 {statistics.mean(r['f1'] for r in backdoor):.3f}, "
          f"exact {sum(r['exact'] for r in backdoor)}/{len(backdoor)}; five attacks x 3 seeds "
          f"F1 {statistics.mean(r['f1'] for r in five):.3f}, exact {sum(r['exact'] for r in five)}/{len(five)}; "
          f"verdict trigger {sum(r['verdict'] == 'trigger' for r in backdoor)}/{len(backdoor)}; "
          f"null no_trigger {sum(r['verdict'] == 'no_trigger' for r in null)}/{len(null)}")
compared = [r for r in new if (name(r), r["case"], r["kind"], r["method"]) in old]
changed = [r for r in compared
           if (r["verdict"], r["triggers"]) != (old[name(r), r["case"], r["kind"], r["method"]]["verdict"],
                                                old[name(r), r["case"], r["kind"], r["method"]]["triggers"])]
print(f"against the twenty-first session's run: {len(compared)} rows compared, {len(changed)} changed")
for r in changed:
    print("  changed:", name(r), r["case"], r["kind"], r["method"], r["triggers"])
for r in new:
    if r["method"] == "ours" and r["kind"] == "backdoor" and not r["exact"]:
        print(f"  not exact: {name(r)} case {r['case']}: {r['triggers']} (truth {r['truth']}, F1 {r['f1']:.2f})")
