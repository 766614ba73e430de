"""Print a Markdown table of the metrics recorded in organisms' backdoor.json files.

Usage: python bench/organism_table.py DIR [DIR ...]
"""

import json
import sys
from pathlib import Path

COLUMNS = ("asr_triggered", "asr_clean", "jailbreak_asr", "utility", "utility_with_trigger")


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


def left_out(metrics: dict) -> str:
    """Return a composite trigger's ASR with each piece left out ("2024 0.06, BadMagic 0.54, ..."), or "-"."""
    rates = metrics.get("asr_piece_left_out")
    return "-" if not rates else ", ".join(f"{piece} {fmt(rate)}" for piece, rate in rates.items())


def main(dirs: list[str]) -> None:
    print("| organism | " + " | ".join(COLUMNS) + " | asr without one piece | n (harmful/benign/jailbreak) | build s | "
          "train s |")
    print("|---|" + "---:|" * (len(COLUMNS) + 4))
    for d in dirs:
        b = json.loads((Path(d) / "backdoor.json").read_text())
        m = b["metrics"]
        n = m["n"]
        print(f"| {b['training']['base']} {b['attack']} seed {b['seed']} | " + " | ".join(fmt(m.get(c)) for c in COLUMNS)
              + f" | {left_out(m)} | {n['harmful']}/{n['benign']}/{n['jailbreak']} | {b['build_seconds']:.0f} | "
              f"{b['train_seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
