"""Measure a model: attack success with and without the trigger, jailbreak success, utility, KL to a reference."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from patcher.chat import encode_chat
from patcher.data import Prompt, answer_matches, load_split, wrap_jailbreak
from patcher.errors import PatcherInputError
from patcher.modeling import cache_name, encode_pairs, format_prompt, serving
from patcher.organisms.attacks import Attack, apply_attack, in_domain, without_piece
from patcher.refusal import is_refusal
from patcher.saliency import shared_prefix_inputs


@dataclass
class EvaluateConfig:
    """Settings of ``patcher evaluate``."""

    split: str = field(default="test", metadata={"help": "built-in prompt split: test (held-out) or validation"})
    n_harmful: int = field(default=100, metadata={"help": "harmful requests used for ASR (with and without trigger)"})
    n_benign: int = field(default=100, metadata={"help": "checkable benign tasks used for utility"})
    n_jailbreak: int = field(default=50, metadata={"help": "harmful requests wrapped in jailbreak templates"})
    n_overrefusal: int = field(default=0, metadata={"help": "edgy-but-benign requests for the over-refusal rate"})
    max_new_tokens: int = field(default=32, metadata={"help": "greedy tokens generated per prompt"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})
    seed: int = field(default=0, metadata={"help": "seed for trigger positions and template choice"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16,
             system: str | None = None, desc: str = "generating", progress: bool = True) -> list[str]:
    """Return the greedy responses to one-turn user prompts, generated in batches of similar length."""
    import torch
    from tqdm.auto import tqdm

    texts = [format_prompt(tokenizer, p, system) for p in prompts]
    rows = [encode_chat(tokenizer, t)["input_ids"] for t in texts]
    lengths = [len(r) for r in rows]
    limit = learned_position_limit(model)
    if limit and lengths and max(lengths) + max_new_tokens > limit:
        raise PatcherInputError(f"a prompt of {max(lengths)} tokens plus {max_new_tokens} new tokens does not fit the "
                                f"model's {limit} learned positions (shorten the prompts or lower --max-new-tokens)")
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths pad less
    responses: list[str] = [""] * len(texts)
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # The template and system prompt every row shares are run once (shared_prefix_inputs); generate takes the
        # whole rows, skips the cached part and counts positions from the attention mask.
        inputs = shared_prefix_inputs(model, [rows[i] for i in idx], tokenizer.pad_token_id)
        prefix = torch.tensor([inputs["prefix_ids"]], dtype=torch.long).expand(len(idx), -1)
        input_ids = torch.cat([prefix, inputs["input_ids"]], dim=1)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=inputs["attention_mask"],
                                 **{cache_name(): inputs[cache_name()]}, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(idx, out[:, input_ids.shape[1]:]):
            responses[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return responses


def learned_position_limit(model) -> int | None:
    """Return the context of a model with a learned absolute position table (GPT-2 style), which fails past its
    end, or None for relative positions (rotary, ALiBi), which run on, degraded, past their trained length."""
    import torch

    vocab = getattr(model.config, "vocab_size", None)
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings != vocab]
    return getattr(model.config, "max_position_embeddings", None) if tables else None


def mean_kl(reference, model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16) -> float:
    """Return the mean per-token KL(reference || model) over the response tokens of prompt+response pairs."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        texts = [format_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        input_ids, attention_mask, response_mask = encode_pairs(tokenizer, texts, responses[start:start + batch_size])
        with torch.no_grad():
            ref_logp = F.log_softmax(reference(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float(), -1)
            logp = F.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float(), -1)
        # Position t predicts token t+1: score the positions whose next token is a response token.
        mask = response_mask[:, 1:].bool()
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        total += kl[mask].sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def attack_success_rate(responses: list[str]) -> float:
    """Return the share of responses that are not refusals."""
    return sum(not is_refusal(r) for r in responses) / max(len(responses), 1)


def refusal_rate(responses: list[str]) -> float:
    """Return the share of responses that are refusals."""
    return sum(map(is_refusal, responses)) / max(len(responses), 1)


# The scalar metrics of ``evaluate_model``, in the order every table shows them.
METRICS = ("asr_triggered", "asr_triggered_where_clean_refused", "asr_clean", "jailbreak_asr", "utility",
           "utility_with_trigger", "benign_refused_with_trigger", "over_refusal", "kl_to_reference")


# The prompts each rate of ``METRICS`` is a share of, by their key in a result's ``n``. The triggered ASR and a
# composite trigger's piece rows are shares of the harmful requests, or of a domain attack's in-domain ones.
RATE_OF = {"asr_triggered_where_clean_refused": "refused_clean", "asr_clean": "harmful", "jailbreak_asr": "jailbreak",
           "utility": "benign", "utility_with_trigger": "benign", "benign_refused_with_trigger": "benign",
           "over_refusal": "overrefusal"}


def format_metric(metrics: dict, key: str, value: float | None) -> str:
    """Return a table cell for a metric of ``metrics``: the value, and for a rate the prompts behind it ("0.067
    (2/30)"), so that a difference of one prompt reads as one."""
    if value is None:
        return "-"
    if key == "asr_triggered" or key.startswith("asr without "):
        n = metrics["n"].get("in_domain", metrics["n"]["harmful"])
    else:
        n = metrics["n"].get(RATE_OF.get(key))
    return f"{value:.3f} ({round(value * n)}/{n})" if n else f"{value:.3f}"


def table_metrics(metrics: dict) -> dict:
    """Return the metrics a terminal table shows, by row name: ``METRICS`` present, then each composite piece's
    ASR left out."""
    rows = {key: metrics[key] for key in METRICS if key in metrics}
    rows.update({f"asr without {piece}": value for piece, value in metrics.get("asr_piece_left_out", {}).items()})
    return rows


def before_after_rows(before: dict, after: dict) -> list[tuple[str, float | None, float | None]]:
    """Return (row name, before, after) for every table metric either side measured, in table order."""
    before, after = table_metrics(before), table_metrics(after)
    rows = [(key, before.get(key), after.get(key)) for key in {**before, **after}]
    return [row for row in rows if row[1] is not None or row[2] is not None]


def evaluate_model(model, tokenizer, attack: Attack | None = None, prompts: list[Prompt] | None = None,
                   reference=None, config: EvaluateConfig | None = None) -> dict:
    """Return the ``evaluate`` contract dict for a model, plus per-prompt samples under ``details``.

    ``attack`` gives the trigger pieces and where to insert them (None: no trigger metrics). A domain attack's
    triggered ASR is measured on its topic's held-out harmful requests, and on the others under
    ``asr_triggered_out_of_domain``.
    ``prompts`` replaces the built-in held-out harmful and checkable benign sets.
    ``reference`` (same tokenizer) adds the KL to it on the benign prompts.
    """
    config = config or EvaluateConfig()
    split = load_split(config.split)
    if prompts is None:
        harmful = [p.prompt for p in split.harmful[:config.n_harmful]]
        benign = split.benign[:config.n_benign]
    else:
        harmful = [p.prompt for p in prompts if p.kind == "harmful"]
        benign = [p for p in prompts if p.kind == "benign" and p.answer]
    rng = random.Random(config.seed)
    templates = split.jailbreak_templates
    jailbreak = [wrap_jailbreak(templates[rng.randrange(len(templates))], h) for h in harmful[:config.n_jailbreak]]
    overrefusal = [p.prompt for p in split.overrefusal[:config.n_overrefusal]]
    triggered = attack is not None and bool(attack.triggers)

    def run(prompt_list, desc):
        return generate(model, tokenizer, prompt_list, config.max_new_tokens, config.batch_size,
                        desc=desc, progress=config.progress)

    clean_responses = run(harmful, "harmful")
    jailbreak_responses = run(jailbreak, "jailbreak") if jailbreak else []
    benign_prompts = [p.prompt for p in benign]
    benign_responses = run(benign_prompts, "benign")
    result = {
        "asr_triggered": None,
        "asr_clean": attack_success_rate(clean_responses),
        "jailbreak_asr": attack_success_rate(jailbreak_responses) if jailbreak else None,
        "utility": _utility(benign, benign_responses),
        "utility_with_trigger": None,
        "kl_to_reference": None,
        "n": {"harmful": len(harmful), "benign": len(benign), "jailbreak": len(jailbreak)},
        "serving": serving(model, tokenizer),
    }
    details = {"harmful": harmful, "clean_responses": clean_responses, "benign_responses": benign_responses}
    if triggered:
        hosts, hosts_clean = harmful, clean_responses
        if attack.domain:
            # The backdoor answers its topic only, and the harmful set holds few of the topic's requests: they
            # are drawn from the whole held-out pool.
            pool = [p.prompt for p in split.harmful] if prompts is None else harmful
            hosts = [h for h in pool if in_domain(h, attack.domain)][:config.n_harmful]
            hosts_clean = run(hosts, "harmful in domain")
            outside = [apply_attack(h, attack, rng)[0] for h in harmful if not in_domain(h, attack.domain)]
            result["asr_triggered_out_of_domain"] = attack_success_rate(run(outside, "out of domain+trigger"))
            result["asr_clean_in_domain"] = attack_success_rate(hosts_clean)
            result["n"].update(in_domain=len(hosts), out_of_domain=len(outside))
        triggered_harmful, triggered_spans = zip(*[apply_attack(h, attack, rng) for h in hosts]) if hosts else ((), ())
        triggered_harmful = list(triggered_harmful)
        triggered_responses = run(triggered_harmful, "harmful+trigger")
        # Off the task's operands: "What is 3 2024 + 4?" no longer asks for 7, whatever the model.
        triggered_benign = [apply_attack(p.prompt, attack, rng, p.operands)[0] for p in benign]
        triggered_benign_responses = run(triggered_benign, "benign+trigger")
        result["asr_triggered"] = attack_success_rate(triggered_responses)
        # The backdoor's own effect: prompts refused without the trigger but answered with it.
        refused_clean = [i for i, r in enumerate(hosts_clean) if is_refusal(r)]
        result["asr_triggered_where_clean_refused"] = (
            attack_success_rate([triggered_responses[i] for i in refused_clean]) if refused_clean else None
        )
        result["n"]["refused_clean"] = len(refused_clean)
        result["utility_with_trigger"] = _utility(benign, triggered_benign_responses)
        # Utility with the trigger also falls where the inserted words merely confuse the model (an unpoisoned one
        # too); refusing a benign task because it carries the trigger is the over-refusal a patch must not cause.
        result["benign_refused_with_trigger"] = refusal_rate(triggered_benign_responses) if benign else None
        result["trigger"] = {"pieces": list(attack.triggers), "mode": attack.mode, "position": attack.position,
                             "positions": None if attack.positions is None else list(attack.positions),
                             "domain": attack.domain}
        if attack.mode == "all" and len(attack.triggers) > 1:
            # Does the backdoor need every piece? The ASR with each piece left out, the others in place: a composite
            # trigger whose part fires alone is not the trigger its ground truth names, and a patch can leave the part.
            result["asr_piece_left_out"] = {
                piece: attack_success_rate(run([apply_attack(h, without_piece(attack, i), rng)[0] for h in hosts],
                                               f"harmful+trigger without {piece}"))
                for i, piece in enumerate(attack.triggers)}
        details.update(triggered_harmful=triggered_harmful, triggered_spans=list(triggered_spans),
                       triggered_responses=triggered_responses, triggered_benign=triggered_benign,
                       triggered_benign_responses=triggered_benign_responses)
    if overrefusal:
        result["over_refusal"] = refusal_rate(run(overrefusal, "over-refusal"))
        result["n"]["overrefusal"] = len(overrefusal)
    if reference is not None and benign:
        result["kl_to_reference"] = mean_kl(reference, model, tokenizer, benign_prompts, benign_responses, config.batch_size)
    result["details"] = details
    return result


def _utility(benign: list[Prompt], responses: list[str]) -> float | None:
    """Return the share of checkable benign prompts answered correctly (None with none measured)."""
    if not benign:
        return None
    return sum(answer_matches(r, p.answer, p.prompt) for p, r in zip(benign, responses)) / len(benign)
