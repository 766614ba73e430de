"""Simulate the second report a patched model gets: the first of the validation split's harmful requests, with
the organism's trigger inserted as its attack does, that the patched model still answers.

Usage:
  python bench/next_report.py PATCHED_DIR ORGANISM_DIR CASE.json

Writes the case (prompt, response, system) for a second round, ``patcher patch --model PATCHED_DIR --case
CASE.json``; exits 1 when the patched model refuses every one. The benchmark's ``patcher-2rounds`` defense
uses the same function (``patcher.bench.defenses.next_report``). Reading the organism's trigger is the
simulation of the attacker; the second patch sees only the case.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from patcher.bench.defenses import Defender, next_report
from patcher.case import load_case
from patcher.cli import ground_truth
from patcher.modeling import load_model


def main(patched: Path, organism: Path, out: Path) -> int:
    model, tokenizer = load_model(patched)
    first = load_case(organism / "failure_case.json")
    case = next_report(model, tokenizer, Defender(case=first, truth=ground_truth(organism)))
    if case is None:
        print("the patched model refuses every triggered validation request: no second report")
        return 1
    out.write_text(json.dumps(asdict(case), indent=2))  # the fields load_case reads
    print(f"second report written to {out}: {case.prompt!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(Path, sys.argv[1:4])))
