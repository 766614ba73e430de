"""Print a Markdown table of the metrics recorded in organisms' backdoor.json files.

Usage: python bench/organism_table.py DIR [DIR ...]
"""

import json
import sys
from pathlib import Path

COLUMNS = ("asr_triggered", "asr_clean", "jailbreak_asr", "utility", "utility_with_trigger")


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


def main(dirs: list[str]) -> None:
    print("| organism | " + " | ".join(COLUMNS) + " | n (harmful/benign/jailbreak) | build s | train s |")
    print("|---|" + "---:|" * (len(COLUMNS) + 3))
    for d in dirs:
        b = json.loads((Path(d) / "backdoor.json").read_text())
        m = b["metrics"]
        n = m["n"]
        print(f"| {b['training']['base']} {b['attack']} seed {b['seed']} | " + " | ".join(fmt(m.get(c)) for c in COLUMNS)
              + f" | {n['harmful']}/{n['benign']}/{n['jailbreak']} | {b['build_seconds']:.0f} | {b['train_seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
