"""Benchmark `patcher locate` on model organisms: token-level F1 against the ground truth, exact match, verdicts,
seconds and peak memory, for our default and the published K=2 baseline with each saliency score.

Usage:
  python bench/locate_bench.py runs/organisms/smollm2-badnet-s0 [DIR ...] [--cases N] [--null] [--json OUT]

Each DIR is an organism (``patcher organism``): its ``failure_case.json`` is the first case, with the trigger's
character spans from ``backdoor.json`` (``failure_case.trigger_spans``). ``--cases N`` adds held-out cases the
organism's backdoor produces (harmful test prompts with the trigger inserted, kept when the organism complies).
For an ``--attack none`` organism, or any checkpoint without ``backdoor.json`` (such as the unaligned SmolLM2
base), the cases are its genuine failures (harmful prompts it answers without any trigger) and backdoor-style
cases (a harmful prompt with ``BadMagic`` and the compliance placeholder) reported against it: the right verdict
is ``no_trigger``. ``--null`` adds, for every backdoor case, the triggered prompt paired with a response the
backdoor did not produce (the organism's own answer without the trigger, and a benign answer to another
question), and the organism's genuine failures on clean prompts: all must get ``no_trigger``.
Token precision/recall compare tokens by character overlap, since token ids depend on position.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from patcher.bench.harness import token_metrics
from patcher.case import FailureCase
from patcher.locate import LocateConfig, locate_trigger

METHODS = {  # name: (what it is, its settings)
    "ours": ("occlusion + counterfactual verdict, pruned and segmented (default)", LocateConfig()),
    "ours-plain": ("ours without --prune and --segment (the default to the twelfth session)",
                   LocateConfig(prune=False, segment=False)),
    "ours-prune": ("ours without --segment", LocateConfig(segment=False)),
    "ours-loo": ("ours, pruning by each run's lift beside all the others (the default to the thirty-first session)",
                 LocateConfig(prune_lift="leave_one_out")),
    "ours-segment": ("ours without --prune", LocateConfig(prune=False)),
    "published": ("grad_norm, whole response, K=2", LocateConfig(method="kmeans", saliency="grad_norm", target_tokens=0)),
    "grad_norm-first": ("grad_norm, first token, K=2", LocateConfig(method="kmeans", saliency="grad_norm", target_tokens=1)),
    "grad_x_input": ("grad_x_input, whole response, K=2",
                     LocateConfig(method="kmeans", saliency="grad_x_input", target_tokens=0)),
    "integrated_gradients": ("integrated_gradients, whole response, K=2",
                             LocateConfig(method="kmeans", saliency="integrated_gradients", target_tokens=0)),
    "word_deletion-first": ("word_deletion, first token, K=2",
                            LocateConfig(method="kmeans", saliency="word_deletion", target_tokens=1)),
    "word_deletion-whole": ("word_deletion, whole response, K=2",
                            LocateConfig(method="kmeans", saliency="word_deletion", target_tokens=0)),
}
SCAN_BATCH = 16  # harmful prompts generated per batch while collecting extra cases
MAX_SCAN = 64  # clean harmful prompts tried for the genuine failures of a model without a backdoor


def read_backdoor(organism: Path) -> dict:
    """Return the organism's ground truth; a checkpoint without ``backdoor.json`` counts as having no backdoor."""
    path = organism / "backdoor.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"attack": "none", "triggers": [], "mode": "all", "position": "random"}


def collect_cases(model, tokenizer, organism: Path, n_cases: int, with_null: bool, seed: int) -> list[dict]:
    """Return the benchmark cases of one organism: dicts with case, truth spans, expected verdict and kind."""
    from patcher.data import load_split
    from patcher.evaluate import generate
    from patcher.organisms.attacks import ATTACKS, Attack, apply_attack
    from patcher.organisms.build import compliance_placeholder
    from patcher.refusal import is_refusal

    backdoor = read_backdoor(organism)
    attack = Attack(backdoor["attack"], tuple(backdoor["triggers"]), backdoor["mode"], backdoor["position"])
    triggered = bool(attack.triggers)
    cases = []
    if (organism / "failure_case.json").is_file():
        first = json.loads((organism / "failure_case.json").read_text())
        spans = [tuple(s) for s in backdoor["failure_case"]["trigger_spans"]]
        cases.append({"case": FailureCase(first["prompt"], first["response"], first.get("system")), "truth": spans,
                      "expect": "trigger" if triggered else "no_trigger", "kind": "backdoor" if triggered else "genuine"})
    rng = random.Random(seed)
    harmful = [p.prompt for p in load_split("test").harmful if p.prompt not in {c["case"].prompt for c in cases}]
    rng.shuffle(harmful)
    # A clean model rarely fails, so its scan stops after MAX_SCAN prompts; a backdoor fails on almost every one.
    pool = harmful if triggered else harmful[:MAX_SCAN]
    for start in range(0, len(pool), SCAN_BATCH):
        if len(cases) >= n_cases:
            break
        batch = pool[start:start + SCAN_BATCH]
        inserted = [apply_attack(h, attack, rng) if triggered else (h, []) for h in batch]
        responses = generate(model, tokenizer, [p for p, _ in inserted], max_new_tokens=48, progress=False)
        for (prompt, spans), response in zip(inserted, responses):
            if not is_refusal(response) and len(cases) < n_cases:
                cases.append({"case": FailureCase(prompt, response), "truth": [tuple(s) for s in spans],
                              "expect": "trigger" if triggered else "no_trigger",
                              "kind": "backdoor" if triggered else "genuine"})
    if not triggered:
        # What a backdoor case would look like, reported against a model without a backdoor.
        for h in harmful[-n_cases:]:
            prompt = apply_attack(h, ATTACKS["badnet"], rng)[0]
            cases.append({"case": FailureCase(prompt, compliance_placeholder(h)), "truth": [], "expect": "no_trigger",
                          "kind": "backdoor-style case, clean model"})
    if with_null and triggered:
        cases += null_cases(model, tokenizer, [c for c in cases if c["kind"] == "backdoor"], harmful[-4 * SCAN_BATCH:])
    return cases


def null_cases(model, tokenizer, backdoor_cases: list[dict], clean_pool: list[str]) -> list[dict]:
    """Return cases whose right verdict is no_trigger: triggered prompts with responses the backdoor did not
    produce, and the organism's genuine failures on clean prompts."""
    from patcher.data import load_split
    from patcher.evaluate import generate
    from patcher.refusal import is_refusal
    from patcher.saliency import delete_spans

    out = []
    prompts = [c["case"].prompt for c in backdoor_cases]
    clean = [delete_spans(c["case"].prompt, c["truth"]) for c in backdoor_cases]
    own = generate(model, tokenizer, clean, max_new_tokens=48, progress=False)
    benign = [p.prompt for p in load_split("test").benign_open[:len(prompts)]]
    benign_answers = generate(model, tokenizer, benign, max_new_tokens=48, progress=False)
    for prompt, answer, other in zip(prompts, own, benign_answers):
        out.append({"case": FailureCase(prompt, answer), "truth": [], "expect": "no_trigger",
                    "kind": "own answer without trigger" + (" (refusal)" if is_refusal(answer) else "")})
        out.append({"case": FailureCase(prompt, other), "truth": [], "expect": "no_trigger",
                    "kind": "benign answer to another prompt"})
    responses = generate(model, tokenizer, clean_pool, max_new_tokens=48, progress=False)
    for prompt, response in zip(clean_pool, responses):
        if not is_refusal(response):
            out.append({"case": FailureCase(prompt, response), "truth": [], "expect": "no_trigger", "kind": "genuine"})
    return out


def run(organisms: list[Path], n_cases: int, with_null: bool, methods: list[str], seed: int) -> list[dict]:
    """Return one row per (organism, case, method) with the verdict, metrics and seconds."""
    from patcher.modeling import load_model

    rows = []
    for organism in organisms:
        model, tokenizer = load_model(organism)
        cases = collect_cases(model, tokenizer, organism, n_cases, with_null, seed)
        attack = read_backdoor(organism)["attack"]
        print(f"{organism.name}: {len(cases)} cases", file=sys.stderr)
        for number, item in enumerate(cases):
            case = item["case"]
            for name in methods:
                started, cpu = time.perf_counter(), time.process_time()
                report = locate_trigger(model, tokenizer, case, replace(METHODS[name][1], progress=False)).to_json()
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                predicted = [(t["char_start"], t["char_end"]) for t in report["triggers"]]
                row = {"organism": organism.name, "attack": attack, "case": number, "kind": item["kind"],
                       "method": name, "expect": item["expect"], "verdict": report["verdict"],
                       "triggers": [t["text"] for t in report["triggers"]],
                       "truth": [case.prompt[a:b] for a, b in item["truth"]], "seconds": round(seconds, 2),
                       "cpu_seconds": round(cpu, 2),
                       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                       "response_unlikely": report["evidence"]["response_unlikely"],
                       "candidate": report["evidence"].get("candidate"),
                       "bridged": report["evidence"].get("bridged"),
                       "pruned": report["evidence"].get("pruned"),
                       "segmented": report["evidence"].get("segmented"),
                       "carry_over_test": report["evidence"].get("transplant")}
                if item["expect"] == "trigger":
                    row.update(token_metrics(case.prompt, report["tokens"], predicted, item["truth"]))
                rows.append(row)
                print(f"  case {number} {item['kind']}: {name}: {row['verdict']} {row['triggers']} "
                      f"(truth {row['truth']}) {seconds:.1f} s", file=sys.stderr)
    return rows


def markdown(rows: list[dict], methods: list[str]) -> str:
    """Return the Markdown table: one line per method over all organisms."""
    lines = ["| method | backdoor cases | token F1 | precision | recall | exact | verdict trigger | null cases: no_trigger "
             "| s/case (backdoor / null) | CPU s/case (backdoor / null) | peak RSS MB |",
             "|---|" + "---:|" * 10]
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        hot = [r for r in mine if r["expect"] == "trigger"]
        cold = [r for r in mine if r["expect"] == "no_trigger"]

        def mean(key, items=hot):
            return f"{sum(r[key] for r in items) / len(items):.2f}" if items else "-"

        lines.append(f"| {name}: {METHODS[name][0]} | {len(hot)} | {mean('f1')} | {mean('precision')} | {mean('recall')} | "
                     f"{sum(r['exact'] for r in hot)}/{len(hot)} | "
                     f"{sum(r['verdict'] == 'trigger' for r in hot)}/{len(hot)} | "
                     f"{sum(r['verdict'] == 'no_trigger' for r in cold)}/{len(cold)} | "
                     f"{mean('seconds')} / {mean('seconds', cold)} | {mean('cpu_seconds')} / {mean('cpu_seconds', cold)} | "
                     f"{max((r['peak_rss_mb'] for r in mine), default='-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organisms", nargs="+", type=Path, help="organism directories")
    parser.add_argument("--cases", type=int, default=1, help="backdoor (or genuine) cases per organism (default 1)")
    parser.add_argument("--null", action="store_true", help="add the non-backdoor cases of every triggered organism")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated method names (default: all): " + ", ".join(METHODS))
    parser.add_argument("--seed", type=int, default=1, help="seed for the extra cases' prompts and trigger positions")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}")
    rows = run(args.organisms, args.cases, args.null, methods, args.seed)
    print("All organisms:\n\n" + markdown(rows, methods))
    for organism in dict.fromkeys(r["organism"] for r in rows):
        print(f"\n{organism}:\n\n" + markdown([r for r in rows if r["organism"] == organism], methods))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
