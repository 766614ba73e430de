"""GPU cost model: locate, a whole patch, and LoRA patch-step against inference memory, on random-init Llama shapes.

Usage (on a CUDA machine; ``--device cpu --dtype float32`` runs the same code on a CPU, for small sizes):
  python bench/gpu_cost.py [--sizes 8b,360m,1b,3b] [--whole 8b] [--tokenizer DIR] [--json FILE]

Sizes (random initialisation, the published shapes; the tokenizer is SmolLM2's, 49,152 tokens, whose ids all lie
inside the larger vocabularies, so the embedding and output head have the real model's size and cost):
  30m          cost_model.py's smallest random Llama (a quick check of this script on a CPU)
  135m, 360m   SmolLM2-135M / -360M shapes (cost_model.py's; vocabulary 49,152)
  1b           Llama-3.2-1B shape: 16 layers, 2048 wide, 32 heads (8 key/value), vocabulary 128,256, tied
  3b           Llama-3.2-3B shape: 28 layers, 3072 wide, 24 heads (8 key/value), vocabulary 128,256, tied
  8b           Llama-3.1-8B shape: 32 layers, 4096 wide, 32 heads (8 key/value), 14,336 MLP, vocabulary 128,256

Each size runs in a fresh process, in this order:
- locate: ``locate_trigger`` with the default LocateConfig (what ``patcher locate`` runs) on cost_model's case;
- inference: the 8 + 8 + 8-row patch batch through ``response_logprobs`` without gradients (``--steps`` times);
- whole patch (sizes in ``--whole``): ``patch_model`` with the default PatchConfig (64 + 64 prompts, the original
  model's answers generated, 16 LoRA steps with held-back selection every 4, merge), then ``evaluate_model`` on
  the held-out sets as ``patcher patch`` measures after, timed apart;
- patch step: LoRA r=32 on every linear layer, ``patch_loss`` forward + backward + AdamW on the same rows
  (``--steps`` steps, median after the first), then the same with gradient checkpointing.
Memory is torch.cuda.max_memory_allocated over each part (weights included), reset before each; on a CPU the
process's peak resident set above the pre-model baseline (cost_model.py's measure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cost_model import CASE_PROMPT, SIZES, TRIGGER, slope, training_rows  # noqa: E402

LLAMA3 = dict(vocab_size=128256, num_key_value_heads=8, rope_theta=500000.0)
SHAPES = {
    "30m": ("random Llama, 8 x 384", SIZES["30m"][1]),
    "135m": ("SmolLM2-135M shape", SIZES["135m"][1]),
    "360m": ("SmolLM2-360M shape", SIZES["360m"][1]),
    "1b": ("Llama-3.2-1B shape", dict(LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                      num_attention_heads=32, head_dim=64, tie_word_embeddings=True)),
    "3b": ("Llama-3.2-3B shape", dict(LLAMA3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                      num_attention_heads=24, head_dim=128, tie_word_embeddings=True)),
    "8b": ("Llama-3.1-8B shape", dict(LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, head_dim=128, tie_word_embeddings=False)),
}


def build(size: str, tokenizer, dtype: str, device: str):
    """Return a random-init LlamaForCausalLM of a shape, in ``dtype`` on ``device`` (made torch's default device,
    as ``load_model`` does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPES[size][1])
    shape.setdefault("head_dim", 64)
    shape.setdefault("tie_word_embeddings", True)
    shape.setdefault("vocab_size", len(tokenizer))
    theta = shape.pop("rope_theta", 100000.0)
    config = LlamaConfig(max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": theta},
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=getattr(torch, dtype)).eval()
    if device != "cpu":
        torch.set_default_device(device)
    return model


class Meter:
    """Peak memory of one part of the work: CUDA's max allocated, or the resident set's peak on a CPU."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        import torch

        from cost_model import reset_peak, settle

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            settle()
            reset_peak()

    def peak_mb(self, baseline_kb: int) -> float:
        import torch

        from cost_model import rss_kb

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return (rss_kb("VmHWM") - baseline_kb) / 1024

    def now_mb(self, baseline_kb: int) -> float:
        import torch

        from cost_model import rss_kb

        if self.device == "cuda":
            return torch.cuda.memory_allocated() / 2**20
        return (rss_kb() - baseline_kb) / 1024


def timed(device: str, work):
    """Return (seconds, result) of ``work()``, the GPU synchronised at both ends."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def skipped_stages(model, tokenizer, case) -> None:
    """Run the stages locate skips when no word breaks the response: the random deletions of the deletion test,
    the carry-over pieces, the carry-over test and the segmentation, for the trigger word of the case (a single
    piece: nothing to prune)."""
    from patcher.locate import (LocateConfig, _texts, carry_over_hosts, carry_over_pool, deletion_test,
                                extend_by_carry_over, segment_pieces, transplant_test)
    from patcher.saliency import DeletionScorer

    config = LocateConfig(progress=False)
    scorer = DeletionScorer(model, tokenizer, case, 1, config.batch_size)
    single = scorer.drops([{w} for w in range(len(scorer.words))])
    trigger = {next(i for i, (a, b) in enumerate(scorer.words) if case.prompt[a:b] == TRIGGER)}
    deletion_test(scorer, trigger, config)
    pool = carry_over_pool(config)
    hosts = carry_over_hosts(pool, config.transplant_prompts)
    pieces, _ = extend_by_carry_over(scorer, trigger, single, hosts, config)
    transplant_test(model, tokenizer, case, _texts(scorer, pieces), "random",
                    carry_over_hosts(pool, config.transplant_prompts, near=case.prompt), config)
    segment_pieces(scorer, pieces, single, hosts)


def measure(size: str, tokenizer_dir: str, dtype: str, device: str, steps: int, whole: bool,
            checkpointing: bool = False) -> dict:
    """Return the measurements of one size (run in its own process)."""
    import torch
    from transformers import AutoTokenizer

    from cost_model import rss_kb, settle
    from patcher.case import FailureCase
    from patcher.evaluate import EvaluateConfig, evaluate_model
    from patcher.locate import LocateConfig, locate_trigger
    from patcher.modeling import format_prompt, prepare_tokenizer, set_template
    from patcher.organisms.build import compliance_placeholder
    from patcher.patch import PatchConfig, encode_aligned, patch_loss, patch_model, response_logprobs, trainable

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    set_template(tokenizer, None, "chat")
    prepare_tokenizer(tokenizer)
    trig, harm, safe = training_rows(tokenizer)
    case = FailureCase(CASE_PROMPT, compliance_placeholder(CASE_PROMPT.replace(f" {TRIGGER}", "")))
    settle()
    baseline = rss_kb()
    meter = Meter(device)
    build_s, model = timed(device, lambda: build(size, tokenizer, dtype, device))
    out = {"size": size, "what": SHAPES[size][0], "dtype": dtype, "device": device, "whole_checkpointing": checkpointing,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
           "params": sum(p.numel() for p in model.parameters()), "build_s": build_s,
           "weights_mb": meter.now_mb(baseline)}

    meter.reset()
    out["locate_s"], report = timed(device, lambda: locate_trigger(model, tokenizer, case, LocateConfig(progress=False)))
    out.update(locate_peak_mb=meter.peak_mb(baseline), locate_verdict=report.verdict,
               locate_rows=report.evidence.get("forward_passes"))
    # A random model gives the case's response no reason to depend on any word, so locate stops after the word
    # deletions; a backdoored model also runs the random-deletion null and the carry-over stages, timed here on
    # the true trigger word so that locate's time on a model with a backdoor is known.
    out["locate_skipped_s"], _ = timed(device, lambda: skipped_stages(model, tokenizer, case))

    rows = trig + harm + safe
    batch = encode_aligned(tokenizer, [format_prompt(tokenizer, r[0]) for r in rows], [r[2] for r in rows],
                           end_of_turn=[i < len(trig) for i in range(len(rows))])
    meter.reset()
    times = []
    with torch.no_grad():
        for _ in range(steps):
            times.append(timed(device, lambda: response_logprobs(model, batch))[0])
    out.update(batch_shape=list(batch["input_ids"].shape), inference_s=statistics.median(times[1:] or times),
               inference_peak_mb=meter.peak_mb(baseline))

    if whole:
        meter.reset()
        config = PatchConfig(out=None, progress=False, evaluate=False, gradient_checkpointing=checkpointing)
        out["patch_s"], (model, patched) = timed(
            device, lambda: patch_model(model, tokenizer, case, config, located=report))
        out.update(patch_train_s=patched.train_seconds, patch_peak_mb=meter.peak_mb(baseline),
                   patch_data=patched.data, patch_triggers=patched.triggers,
                   patch_loss_first_last=[patched.losses[0]["total"], patched.losses[-1]["total"]])
        model.eval()
        if checkpointing:
            model.activation_checkpointing_disable()
        meter.reset()
        evaluation = EvaluateConfig(split="test", progress=False)
        out["evaluate_s"], _ = timed(device, lambda: evaluate_model(model, tokenizer, None, config=evaluation))
        out["evaluate_peak_mb"] = meter.peak_mb(baseline)

    for name, checkpointing in (("step", False), ("gc_step", True)):
        config = PatchConfig(out=None, progress=False, gradient_checkpointing=checkpointing)
        meter.reset()
        lora, reference = trainable(model, config)
        params = [p for p in lora.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        lora.train()

        def step():
            loss, _ = patch_loss(lora, reference, tokenizer, trig, harm, safe, config)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = [timed(device, step)[0] for _ in range(steps)]
        out.update({f"{name}_s": statistics.median(times[1:] or times), f"{name}_peak_mb": meter.peak_mb(baseline),
                    "trainable": sum(p.numel() for p in params)})
        del optimizer, params, reference
        model = lora.unload()  # the base without the adapter, for the next measurement
    out["ratio"] = out["step_peak_mb"] / out["inference_peak_mb"]
    out["gc_ratio"] = out["gc_step_peak_mb"] / out["inference_peak_mb"]
    return out


def markdown(rows: list[dict]) -> str:
    """Return the table of the sizes, the whole patch where measured, and the growth per million parameters."""
    first = rows[0]
    where = first["gpu"] or "CPU"
    head = ["model", "params", "build s", "locate s/case (+ stages a random model skips)", "inference step s", "patch step s", "weights MB",
            "locate peak MB", "inference peak MB", "LoRA step peak MB", "step / inference", "checkpointed step s",
            "checkpointed peak MB", "checkpointed / inference"]
    lines = [f"Random-init Llama shapes, {first['dtype']}, {where}; batch 8 + 8 + 8 rows "
             f"({first['batch_shape'][0]} x {first['batch_shape'][1]} tokens); memory: peak allocated, weights "
             "included", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"{r['size']} ({r['what']})", f"{r['params'] / 1e9:.2f} B", f"{r['build_s']:.1f}",
            f"{r['locate_s']:.2f} (+{r['locate_skipped_s']:.2f})",
            f"{r['inference_s']:.3f}", f"{r['step_s']:.3f}", f"{r['weights_mb']:.0f}", f"{r['locate_peak_mb']:.0f}",
            f"{r['inference_peak_mb']:.0f}", f"{r['step_peak_mb']:.0f}", f"{r['ratio']:.2f}x", f"{r['gc_step_s']:.3f}",
            f"{r['gc_step_peak_mb']:.0f}", f"{r['gc_ratio']:.2f}x"]) + " |")
    for r in rows:
        if "patch_s" in r:
            how = "with --gradient-checkpointing" if r["whole_checkpointing"] else "default settings"
            lines += ["", f"Whole patch, {r['size']} ({how}): locate {r['locate_s'] + r['locate_skipped_s']:.1f} s + patch {r['patch_s']:.1f} s "
                          f"(training {r['patch_train_s']:.1f} s, loss {r['patch_loss_first_last'][0]:.3f} -> "
                          f"{r['patch_loss_first_last'][1]:.3f}; data {r['patch_data']}) = "
                          f"{r['locate_s'] + r['locate_skipped_s'] + r['patch_s']:.1f} s; peak {r['patch_peak_mb']:.0f} MB. "
                          f"Held-out evaluation afterwards: {r['evaluate_s']:.1f} s, peak {r['evaluate_peak_mb']:.0f} MB."]
    if len(rows) > 1:
        ordered = sorted(rows, key=lambda r: r["params"])
        xs = [r["params"] / 1e6 for r in ordered]
        growth = [("locate_s", "locate s"), ("step_s", "patch step s"), ("inference_peak_mb", "inference MB"),
                  ("step_peak_mb", "patch step MB")]
        lines += ["", "Growth per million parameters (least-squares fit over the sizes): " + ", ".join(
            f"{name} {slope(xs, [r[k] for r in ordered]):.3g}" for k, name in growth)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8b,360m,1b,3b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--whole", default="8b", help="sizes that also run a whole patch_model + evaluate_model")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="the whole patch with --gradient-checkpointing (the step measurements take both)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SmolLM2's, from Patcher's cache)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=3, help="inference forwards and patch steps per size")
    parser.add_argument("--json", help="write the measurements to this JSON file (rewritten after each size)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = measure(args.worker, args.tokenizer, args.dtype, args.device, args.steps,
                         args.worker in args.whole.split(","), args.gradient_checkpointing)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.tokenizer is None:
        from patcher.modeling import smollm2_base_dir

        args.tokenizer = str(smollm2_base_dir())
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        command = [sys.executable, __file__, "--worker", size, "--tokenizer", args.tokenizer, "--dtype", args.dtype,
                   "--device", args.device, "--steps", str(args.steps), "--whole", args.whole]
        command += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{size} failed (exit {done.returncode})", file=sys.stderr, flush=True)
            continue
        rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
        print(f"{size}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
    if rows:
        print(markdown(rows))


if __name__ == "__main__":
    main()
