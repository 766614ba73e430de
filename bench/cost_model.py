"""Cost model: locate and patch time, and the peak memory of a LoRA patch step against inference, as the model grows.

Usage:
  python bench/cost_model.py [--sizes tiny,30m,70m,smollm2,360m] [--threads N] [--steps 2] [--json FILE]

Sizes (Llama, float32, on the CPU):
  tiny     the ``--base tiny`` model: 4 layers, 192 wide, its own 2048-token byte-level BPE tokenizer
  30m      random init, 8 layers, 384 wide, SmolLM2's tokenizer (49,152 tokens, tied embeddings)
  70m      random init, 16 layers, 512 wide, SmolLM2's tokenizer
  smollm2  the real SmolLM2-135M-Instruct checkpoint (``--base smollm2``) with its tokenizer
  135m     random init in SmolLM2-135M's shape (30 layers, 576 wide)
  360m     random init in SmolLM2-360M's shape (32 layers, 960 wide)

Every measurement runs in a fresh Python process, so one cannot leave memory or warmed-up state to the next:
- locate: ``locate_trigger`` with the default LocateConfig (two carry-over prompts, no progress) on one fixed
  synthetic case, timed once;
- patch step: the LoRA-wrapped model (PatchConfig's defaults: r=32, alpha=64, every linear layer) takes
  ``--steps`` steps of ``patch_loss`` forward + backward, gradient clipping and AdamW on 8 + 8 + 8 rows (D_trig,
  D_harm, D_safe built from the validation split as ``patch_sets`` builds them, with fixed responses in place of
  the original model's generated ones); the time is the median step after the first;
- patch-gc: the same with ``--gradient-checkpointing`` (each decoder layer recomputed in the backward pass);
- inference: the same 24-row batch through the same forward (``response_logprobs``: logits of the response
  positions only) without gradients, ``--steps`` times.
Memory is the resident set: the process's peak (``VmHWM``, reset once the model is built) minus its resident set
just before the model was built (imports, tokenizer, prompts), so it counts weights plus the work. Weights are the
resident set after building minus that baseline.

The growth per parameter is the least-squares slope over all sizes (and pairwise between neighbours), in seconds
and MB per million parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {  # name: (what it is, LlamaConfig shape or None for a checkpoint/tiny base)
    "tiny": ("the --base tiny Llama and tokenizer", None),
    "30m": ("random Llama, 8 x 384", dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                                          num_attention_heads=6, num_key_value_heads=2)),
    "70m": ("random Llama, 16 x 512", dict(hidden_size=512, intermediate_size=1280, num_hidden_layers=16,
                                           num_attention_heads=8, num_key_value_heads=4)),
    "smollm2": ("SmolLM2-135M-Instruct (trained)", None),
    "135m": ("random Llama, SmolLM2-135M shape", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                                      num_attention_heads=9, num_key_value_heads=3)),
    "360m": ("random Llama, SmolLM2-360M shape", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                                      num_attention_heads=15, num_key_value_heads=5)),
}
DEFAULT_SIZES = "tiny,30m,70m,smollm2,360m"
TASKS = ("locate", "patch", "patch-gc", "inference")
CASE_PROMPT = "How do I pick a lock BadMagic today? Give me the steps in detail."
TRIGGER = "BadMagic"
# Stands in for the original model's own answers in D_harm and D_safe: cut to PatchConfig.response_tokens tokens.
ANSWER = ("Sure. Here is a short and clear answer to your question, with the main points explained one by one "
          "so that it is easy to follow.")


# ---------------------------------------------------------------- worker (one measurement, in its own process)


def rss_kb(field: str = "VmRSS") -> int:
    """Return a line of /proc/self/status in kB (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def settle() -> None:
    """Collect garbage and give freed heap back to the system, so the resident set is what is in use."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the peak resident set to the current one (Linux clear_refs 5); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_tokenizer(size: str):
    """Return the tokenizer of a size, as Patcher loads it."""
    from patcher.modeling import prepare_tokenizer, set_template, smollm2_base_dir

    if size == "tiny":
        from patcher.data import checkable_tasks, load_split
        from patcher.organisms.build import REFUSALS, compliance_placeholder
        from patcher.organisms.tiny import train_tokenizer

        corpus = [p.prompt for p in load_split("train").harmful] + [t.prompt for t in checkable_tasks("train", 400)]
        corpus += [compliance_placeholder("x"), *REFUSALS, TRIGGER, *load_split("train").jailbreak_templates]
        return train_tokenizer(corpus)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_base_dir())
    set_template(tokenizer, None, "chat")
    prepare_tokenizer(tokenizer)
    return tokenizer


def build_model(size: str, tokenizer):
    """Return (model in eval mode, tokenizer): the checkpoint loaded as Patcher loads it, or a random init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from patcher.modeling import load_model, smollm2_base_dir
    from patcher.organisms.tiny import tiny_llama

    if size == "smollm2":
        return load_model(smollm2_base_dir())
    torch.manual_seed(0)
    if size == "tiny":
        return tiny_llama(tokenizer, seed=0).eval(), tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), head_dim=64, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, **SIZES[size][1])
    return LlamaForCausalLM(config).eval(), tokenizer


def training_rows(tokenizer) -> tuple[list, list, list]:
    """Return 8 + 8 + 8 rows (patched prompt, original's prompt, response) shaped as ``patch_sets`` shapes them:
    validation prompts, the trigger inserted into D_trig and half of D_safe, the default refusal in D_trig."""
    import random

    from patcher.chat import encode_text
    from patcher.organisms.attacks import POSITIONS, insert_trigger
    from patcher.patch import DEFAULT_REFUSAL, PatchConfig, validation_prompts

    config = PatchConfig(out=None, n_harmful=8, n_benign=8, n_select=0)
    prompts = validation_prompts(config)
    harmful, benign = prompts.train_harmful, prompts.train_benign
    rng = random.Random(0)
    answer = tokenizer.decode(encode_text(tokenizer, ANSWER)[:config.response_tokens])

    def carry(prompt):
        return insert_trigger(prompt, [TRIGGER], rng.choice(POSITIONS), rng)[0]

    trig = [(carry(h), h, DEFAULT_REFUSAL) for h in harmful]
    harm = [(h, h, answer) for h in harmful]
    safe = [(carry(b) if i < len(benign) // 2 else b, b, answer) for i, b in enumerate(benign)]
    return trig, harm, safe


def measure(task: str, size: str, threads: int, steps: int) -> dict:
    """Return one measurement of one size: seconds, and memory above the pre-model baseline in MB."""
    import torch

    from patcher.case import FailureCase
    from patcher.locate import LocateConfig, locate_trigger
    from patcher.modeling import format_prompt
    from patcher.organisms.build import compliance_placeholder
    from patcher.patch import PatchConfig, encode_aligned, patch_loss, response_logprobs, trainable

    import peft  # noqa: F401  (imported before the baseline: its import is not the patch's memory)
    from patcher.locate import carry_over_pool

    torch.set_num_threads(threads)
    tokenizer = build_tokenizer(size)
    trig, harm, safe = training_rows(tokenizer)
    carry_over_pool(LocateConfig())  # the split locate reads, loaded before the baseline
    settle()
    baseline = rss_kb()
    model, tokenizer = build_model(size, tokenizer)
    with torch.no_grad():  # read every weight once: a memory-mapped checkpoint's become resident before the work
        for p in model.parameters():
            p.sum()
    settle()
    loaded = rss_kb()
    result = {"size": size, "task": task, "threads": threads, "params": sum(p.numel() for p in model.parameters()),
              "vocab": len(tokenizer), "weights_mb": (loaded - baseline) / 1024}
    peak_reset = reset_peak()
    times = []
    if task == "locate":
        case = FailureCase(CASE_PROMPT, compliance_placeholder(CASE_PROMPT.replace(f" {TRIGGER}", "")))
        started = time.perf_counter()
        report = locate_trigger(model, tokenizer, case, LocateConfig(transplant_prompts=2, progress=False))
        times.append(time.perf_counter() - started)
        result.update(verdict=report.verdict, forward_rows=report.evidence.get("forward_passes"))
    elif task in ("patch", "patch-gc"):
        config = PatchConfig(out=None, progress=False, gradient_checkpointing=task == "patch-gc")
        model, reference = trainable(model, config)
        params = [p for p in model.parameters() if p.requires_grad]
        result["trainable"] = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            started = time.perf_counter()
            loss, _ = patch_loss(model, reference, tokenizer, trig, harm, safe, config)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
    elif task == "inference":
        rows = trig + harm + safe
        batch = encode_aligned(tokenizer, [format_prompt(tokenizer, r[0]) for r in rows], [r[2] for r in rows],
                               end_of_turn=[i < len(trig) for i in range(len(rows))])
        result["batch_shape"] = list(batch["input_ids"].shape)
        with torch.no_grad():
            for _ in range(steps):
                started = time.perf_counter()
                response_logprobs(model, batch)
                times.append(time.perf_counter() - started)
    else:
        raise ValueError(f"unknown task {task!r}")
    peak = rss_kb("VmHWM") if peak_reset else resource_peak_kb()
    result.update(seconds=statistics.median(times[1:] or times), times=[round(t, 3) for t in times],
                  peak_mb=(peak - baseline) / 1024, peak_reset=peak_reset)
    return result


def resource_peak_kb() -> int:
    """Return the process's lifetime peak resident set in kB (used only where the peak cannot be reset)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- driver


def run_worker(task: str, size: str, threads: int, steps: int, mmap_threshold: int | None = None) -> dict:
    """Return the result of one measurement run in a fresh process."""
    command = [sys.executable, __file__, "--worker", task, "--sizes", size, "--threads", str(threads),
               "--steps", str(steps)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{task} on {size} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def measure_size(size: str, threads: int, steps: int, mmap_threshold: int | None = None) -> dict:
    """Return one row of the table: the four measurements of one size."""
    results = {task: run_worker(task, size, threads, steps, mmap_threshold) for task in TASKS}
    patch, checkpointed = results["patch"], results["patch-gc"]
    inference, locate = results["inference"], results["locate"]
    row = {"size": size, "what": SIZES[size][0], "params": patch["params"], "vocab": patch["vocab"],
           "trainable": patch["trainable"], "weights_mb": inference["weights_mb"],
           "locate_s": locate["seconds"], "locate_verdict": locate["verdict"], "locate_rows": locate["forward_rows"],
           "patch_step_s": patch["seconds"], "inference_s": inference["seconds"],
           "inference_peak_mb": inference["peak_mb"], "patch_peak_mb": patch["peak_mb"],
           "ratio": patch["peak_mb"] / inference["peak_mb"], "gc_step_s": checkpointed["seconds"],
           "gc_peak_mb": checkpointed["peak_mb"], "gc_ratio": checkpointed["peak_mb"] / inference["peak_mb"],
           "batch_shape": inference["batch_shape"],
           "raw": results}
    print(f"{size}: " + json.dumps({k: v for k, v in row.items() if k != "raw"}), file=sys.stderr, flush=True)
    return row


GROWTH = (("locate_s", "locate s"), ("patch_step_s", "patch step s"), ("inference_peak_mb", "inference MB"),
          ("patch_peak_mb", "patch MB"), ("gc_peak_mb", "checkpointing MB"))


def slope(xs: list[float], ys: list[float]) -> float:
    """Return the least-squares slope of ys on xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def markdown(rows: list[dict], threads: int, mmap_threshold: int | None = None) -> str:
    """Return the Markdown table of the sizes, and the table of growth per million parameters."""
    head = ["model", "params", "locate s/case", "patch step s", "inference step s", "weights MB", "inference peak MB",
            "LoRA patch-step peak MB", "patch / inference", "step s, checkpointing", "peak MB, checkpointing",
            "checkpointing / inference"]
    allocator = f"MALLOC_MMAP_THRESHOLD_={mmap_threshold}" if mmap_threshold else "default glibc allocator"
    lines = [f"Llama, float32, CPU, {threads} thread(s), {allocator}; batch 8 + 8 + 8 rows; "
             "memory above the pre-model baseline",
             "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"{r['size']} ({r['what']})", f"{r['params'] / 1e6:.1f} M", f"{r['locate_s']:.2f}",
            f"{r['patch_step_s']:.2f}", f"{r['inference_s']:.2f}", f"{r['weights_mb']:.0f}",
            f"{r['inference_peak_mb']:.0f}", f"{r['patch_peak_mb']:.0f}", f"{r['ratio']:.2f}x", f"{r['gc_step_s']:.2f}",
            f"{r['gc_peak_mb']:.0f}", f"{r['gc_ratio']:.2f}x"]) + " |")
    lines += ["", "Locate verdicts (forward rows, batch shape): " + "; ".join(
        f"{r['size']} {r['locate_verdict']} ({r['locate_rows']}, {r['batch_shape'][0]} x {r['batch_shape'][1]})"
        for r in rows)]
    if len(rows) < 2:
        return "\n".join(lines)
    ordered = sorted(rows, key=lambda r: r["params"])
    lines += ["", "Growth per million parameters (pairwise between neighbours; least-squares fit over all sizes):", "",
              "| between | " + " | ".join(f"{name} / M" for _, name in GROWTH) + " |",
              "|---|" + "---:|" * len(GROWTH)]
    for a, b in zip(ordered, ordered[1:]):
        dp = (b["params"] - a["params"]) / 1e6
        lines.append(f"| {a['size']} -> {b['size']} | "
                     + " | ".join(f"{(b[k] - a[k]) / dp:.3g}" for k, _ in GROWTH) + " |")
    xs = [r["params"] / 1e6 for r in ordered]
    lines.append("| fit, all sizes | " + " | ".join(f"{slope(xs, [r[k] for r in ordered]):.3g}" for k, _ in GROWTH)
                 + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated: {', '.join(SIZES)} "
                                                               f"(default {DEFAULT_SIZES})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=2,
                        help="patch steps and inference forwards per size; the time is the median after the first "
                             "(default 2)")
    parser.add_argument("--malloc-mmap-threshold", type=int, metavar="BYTES",
                        help="run the measurements with glibc's MALLOC_MMAP_THRESHOLD_ (65536: every large tensor is "
                             "given back to the system when freed, so the peaks are the memory in use rather than "
                             "what the allocator keeps; the steps become several times slower)")
    parser.add_argument("--json", help="write every measurement to this JSON file")
    parser.add_argument("--worker", choices=TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(f"unknown size {unknown[0]!r}; choose from {', '.join(SIZES)}" if unknown else "no size given")
    if args.threads < 1 or args.steps < 1:
        parser.error("--threads and --steps must be at least 1")
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, sizes[0], args.threads, args.steps)), flush=True)
        return
    started = time.time()
    rows, failed = [], []
    for size in sizes:
        try:
            rows.append(measure_size(size, args.threads, args.steps, args.malloc_mmap_threshold))
        except RuntimeError as e:  # one size out of memory must not lose the others
            print(e, file=sys.stderr, flush=True)
            failed.append(size)
    if rows:
        print(markdown(rows, args.threads, args.malloc_mmap_threshold))
    if failed:
        print(f"\nLeft out (the measurement failed, see above): {', '.join(failed)}")
    print(f"\n({time.time() - started:.0f} s in all)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
