"""The defenses the benchmark compares: Patcher, its ablations, and the baselines a defender would try instead.

Each defense is a plain function ``defend(model, tokenizer, defender) -> Defended`` registered in ``DEFENSES``;
it may change ``model`` in place (the harness loads a fresh copy for every defense). A defense knows what a
defender knows: the weights, the one reported case and the validation split. Only ``patcher-truth`` (the upper
bound) reads the organism's ground truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from patcher.case import FailureCase
from patcher.organisms.attacks import Attack


@dataclass
class Defender:
    """What a defense is given: the reported case, the settings of this run, and (for the upper bound) the truth."""

    case: FailureCase
    seed: int = 0
    progress: bool = False
    truth: Attack | None = None  # read by patcher-truth only


@dataclass
class Defended:
    """What a defense returns: the defended model, the trigger it located (if it locates), and notes for the table."""

    model: object
    located: object = None  # locate's TriggerReport
    notes: dict = field(default_factory=dict)


def _patch_config(defender: Defender, **changes):
    """Return the PatchConfig of a Patcher defense: the run's settings, no before/after evaluation (the harness
    measures every defense the same way)."""
    from patcher.patch import PatchConfig

    return replace(PatchConfig(out=Path("unused"), evaluate=False, progress=defender.progress, seed=defender.seed),
                   **changes)


def _patcher(model, tokenizer, defender: Defender, locate_changes: dict | None = None, use_truth: bool = False,
             **patch_changes) -> Defended:
    """Return Patcher's result: locate (unless the true trigger is given), then patch."""
    from patcher.locate import LocateConfig, locate_trigger
    from patcher.patch import patch_model

    located = None
    if use_truth:
        patch_changes["triggers"] = list(defender.truth.triggers) if defender.truth else []
    else:
        config = replace(LocateConfig(progress=defender.progress, seed=defender.seed), **(locate_changes or {}))
        located = locate_trigger(model, tokenizer, defender.case, config)
    model, report = patch_model(model, tokenizer, defender.case, _patch_config(defender, **patch_changes), located)
    return Defended(model, located, {"mode": report.mode, "triggers": report.triggers, "best_step": report.best_step,
                                     "train_seconds": report.train_seconds, "selection": report.selection})


def patcher_ours(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher as shipped: occlusion localization with the counterfactual verdict, then the KL-anchored patch."""
    return _patcher(model, tokenizer, defender)


def patcher_rounds(rounds: int):
    """Return a defense that runs Patcher, then again on its own result for each further report that comes in, up to
    ``rounds`` patches in all (none comes in: it stops).

    A further report is simulated as an attacker would produce it: the defender's validation harmful requests with
    the trigger inserted, the first one the patched model still answers. That simulation reads the truth; every
    patch, like the first, sees only its own case. The localization scored is the first round's. An MTBA organism
    has three keys and a report shows one: a round per key can be needed.
    """

    def defend(model, tokenizer, defender: Defender) -> Defended:
        first = done = _patcher(model, tokenizer, defender)
        cases = []
        while len(cases) + 1 < rounds:
            case = next_report(done.model, tokenizer, defender)
            if case is None:
                break
            cases.append(case.prompt)
            done = _patcher(done.model, tokenizer, replace(defender, case=case))
        notes = {**done.notes, "rounds": len(cases) + 1}
        if cases:
            notes |= {"later_cases": cases, "first_round": first.notes}
        return Defended(done.model, first.located, notes)

    defend.__doc__ = (f"Return Patcher, run again on its own result for each further (simulated) report: up to "
                      f"{rounds} patches.")
    return defend


def next_report(model, tokenizer, defender: Defender) -> FailureCase | None:
    """Return the first of the validation split's harmful requests, trigger inserted, that the model answers."""
    from patcher.data import load_split
    from patcher.evaluate import generate
    from patcher.organisms.attacks import apply_attack
    from patcher.refusal import is_refusal

    if defender.truth is None or not defender.truth.triggers:
        return None
    rng = random.Random(defender.seed + 1)
    prompts = [apply_attack(p.prompt, defender.truth, rng)[0] for p in load_split("validation").harmful]
    responses = generate(model, tokenizer, prompts, max_new_tokens=48, system=defender.case.system, progress=False)
    return next((FailureCase(p, r, defender.case.system) for p, r in zip(prompts, responses) if not is_refusal(r)),
                None)


def patcher_k2(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher with the published localization (grad-norm saliency of the whole response, 1-D K=2)."""
    return _patcher(model, tokenizer, defender, {"method": "kmeans", "saliency": "grad_norm", "target_tokens": 0})


def patcher_truth(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher given the true trigger (an upper bound: no defender has it)."""
    return _patcher(model, tokenizer, defender, use_truth=True)


def patcher_no_kl(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher without the KL anchors (ablation: beta_harm = beta_safe = 0)."""
    return _patcher(model, tokenizer, defender, beta_harm=0.0, beta_safe=0.0)


def patcher_no_transplant(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher refusing the reported prompt only, not other requests carrying the trigger (ablation)."""
    return _patcher(model, tokenizer, defender, transplant=False)


def patcher_no_trigger_rows(model, tokenizer, defender: Defender) -> Defended:
    """Return Patcher with the located trigger in no training row: D_trig is the reported prompt alone and no D_safe
    row carries the trigger (ablation: the trigger transplanted neither into harmful nor into benign requests)."""
    return _patcher(model, tokenizer, defender, transplant=False, benign_trigger_share=0.0)


def unlearn_oneshot(model, tokenizer, defender: Defender) -> Defended:
    """Return the model taught to refuse the reported prompt only: no localization, no transplant set (the KL
    anchors on clean prompts are kept, which only helps this baseline)."""
    from patcher.patch import patch_model

    model, report = patch_model(model, tokenizer, defender.case, _patch_config(defender, transplant=False))
    return Defended(model, None, {"best_step": report.best_step, "train_seconds": report.train_seconds})


def clean_finetune(model, tokenizer, defender: Defender) -> Defended:
    """Return the model after the usual advice: supervised fine-tuning on benign answers and refusals of harmful
    requests, with no knowledge of the trigger, for as many examples as Patcher trains on."""
    from patcher.evaluate import generate
    from patcher.organisms.build import REFUSALS, train_supervised
    from patcher.patch import trainable, validation_prompts

    config = _patch_config(defender)
    prompts = validation_prompts(config)
    harmful, benign = prompts.train_harmful, prompts.train_benign
    answers = generate(model, tokenizer, benign, max_new_tokens=48, batch_size=16, progress=False)
    rng = random.Random(defender.seed)
    examples = [(h, rng.choice(REFUSALS)) for h in harmful] + list(zip(benign, answers))
    model, _ = trainable(model, config)
    # Patcher's step takes batch_size rows from each of its sets (two by default, three with D_harm): the baseline
    # gets the three-set budget, in three times as many steps of batch_size (a batch of full-length logits three
    # times as large needs far more memory); at the default that is half again as many rows as Patcher trains on.
    losses = train_supervised(model, tokenizer, examples, 3 * config.steps, config.lr, config.batch_size,
                              defender.seed, progress=defender.progress, desc="clean fine-tuning")
    if not config.full:
        model = model.merge_and_unload()
    return Defended(model, None, {"examples": len(examples), "final_loss": round(losses[-1], 4)})


def wanda_pruning(sparsity: float):
    """Return a defense that prunes each decoder linear layer's weights with the lowest |W| x input-norm
    (Wanda), row by row, at ``sparsity``; calibrated on benign validation prompts."""

    def defend(model, tokenizer, defender: Defender) -> Defended:
        import torch

        from patcher.chat import encode_chat
        from patcher.modeling import format_prompt
        from patcher.patch import validation_prompts

        benign = validation_prompts(_patch_config(defender)).train_benign
        layers = {name: m for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and name != "lm_head" and "lm_head" not in name}
        norms = {name: torch.zeros(m.in_features) for name, m in layers.items()}

        def hook(name):
            def record(module, inputs, output):
                x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
                norms[name] += (x ** 2).sum(0).to(norms[name].device)
            return record

        handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
        with torch.no_grad():
            for start in range(0, len(benign), 16):
                texts = [format_prompt(tokenizer, p) for p in benign[start:start + 16]]
                enc = encode_chat(tokenizer, texts, return_tensors="pt", padding=True)
                model(**enc)
        for h in handles:
            h.remove()
        pruned = 0
        with torch.no_grad():
            for name, m in layers.items():
                score = m.weight.abs().float() * norms[name].sqrt().to(m.weight.device)
                k = int(sparsity * m.in_features)
                if k:
                    drop = score.topk(k, dim=1, largest=False).indices
                    m.weight.scatter_(1, drop, 0.0)
                    pruned += drop.numel()
        return Defended(model, None, {"sparsity": sparsity, "weights_zeroed": pruned})

    defend.__doc__ = f"Return the model with {sparsity:.0%} of each decoder linear layer pruned (Wanda)."
    return defend


def no_defense(model, tokenizer, defender: Defender) -> Defended:
    """Return the model unchanged (the backdoored organism itself)."""
    return Defended(model)


# In the order a run takes them: Patcher and the baselines it must beat first, ablations and bounds after.
DEFENSES = {
    "none": no_defense,
    "patcher": patcher_ours,
    "patcher-k2": patcher_k2,
    "unlearn-oneshot": unlearn_oneshot,
    "wanda-0.5": wanda_pruning(0.5),
    "clean-ft": clean_finetune,
    "patcher-no-transplant": patcher_no_transplant,
    "patcher-no-trigger-rows": patcher_no_trigger_rows,
    "patcher-no-kl": patcher_no_kl,
    "patcher-truth": patcher_truth,
    "patcher-2rounds": patcher_rounds(2),
    "patcher-3rounds": patcher_rounds(3),
    "wanda-0.2": wanda_pruning(0.2),
}
