"""Response-conditioned saliency of the user-prompt tokens of a failure case.

Every score asks the same question: how much does this part of the prompt matter for the model
producing the reported response? The loss is the summed teacher-forced negative log-likelihood of the
response (or of its first ``target_tokens`` tokens) after the prompt, formatted with the chat template
exactly as the model is served. Only tokens inside the user's prompt text are candidates: template,
system-prompt and special tokens are scored by the model but never returned.

``SALIENCY`` maps a method name to a plain function
``f(model, tokenizer, case, tokens, target_tokens) -> numpy array`` with one score per user token.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np

from patcher.case import FailureCase
from patcher.chat import encode_chat, encode_text
from patcher.errors import PatcherInputError
from patcher.modeling import cache_name, format_prompt

# Stands in for the prompt to find where the chat template puts the user's text.
_PROBE = "\x00patcher-probe\x00"


@dataclass(frozen=True)
class PromptTokens:
    """A case tokenized as served: formatted prompt then response, and where the user's prompt tokens are."""

    input_ids: list[int]  # formatted prompt tokens, then response tokens
    n_prompt: int  # formatted prompt tokens; the response starts at this index
    user: list[int]  # indices into input_ids of the tokens inside the user's prompt text
    spans: list[tuple[int, int]]  # character span of each user token in the case prompt (may include a space)
    texts: list[str]  # the case-prompt text of each user token


def user_text_span(tokenizer, prompt: str, system: str | None) -> tuple[str, int, int, int]:
    """Return (formatted text, start, end, shift): ``text[start:end] == prompt[shift:shift + end - start]``.

    The template may trim the user's text, so the span is searched before the template's closing part
    (found by formatting a probe string), never inside the system prompt or the assistant header.
    """
    text = format_prompt(tokenizer, prompt, system)
    probe = format_prompt(tokenizer, _PROBE, system)
    closing = probe[probe.index(_PROBE) + len(_PROBE):]
    limit = len(text) - len(closing) if text.endswith(closing) else len(text)
    core = prompt.strip()
    start = text.rfind(core, 0, limit)
    if start < 0:
        raise PatcherInputError("the chat template changes the prompt text, so its tokens cannot be mapped back to it")
    return text, start, start + len(core), prompt.index(core)


def tokenize_case(tokenizer, case: FailureCase) -> PromptTokens:
    """Return the case's tokens as served, with the user tokens and their character spans in ``case.prompt``."""
    text, start, end, shift = user_text_span(tokenizer, case.prompt, case.system)
    enc = encode_chat(tokenizer, text, return_offsets_mapping=True)
    response_ids = encode_text(tokenizer, case.response)
    user, spans = [], []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        # A token that straddles the template boundary belongs to the template, not to the user.
        if start <= a and b <= end and b > a:
            user.append(i)
            spans.append((a - start + shift, b - start + shift))
    if not user:
        raise PatcherInputError("no token of the prompt text survives the chat template")
    return PromptTokens(enc["input_ids"] + response_ids, len(enc["input_ids"]), user, spans,
                        [case.prompt[a:b] for a, b in spans])


def _target_slice(tokens: PromptTokens, target_tokens: int) -> tuple[int, int]:
    """Return the (start, end) token indices of the response tokens the loss is scored on (0: all of them)."""
    end = len(tokens.input_ids) if not target_tokens else min(len(tokens.input_ids), tokens.n_prompt + target_tokens)
    return tokens.n_prompt, end


def _embedding_nll(model, embeddings, ids, start: int, end: int):
    """Return the summed NLL of ``ids[start:end]`` per row, the rows given as input embeddings."""
    import torch.nn.functional as F

    logits = model(inputs_embeds=embeddings).logits[:, start - 1:end - 1]
    targets = ids[start:end].expand(embeddings.shape[0], -1)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(-1)


def _gradient(model, tokens: PromptTokens, target_tokens: int):
    """Return (input embeddings, d loss / d embeddings) of the prompt and scored response, one forward and backward."""
    import torch

    start, end = _target_slice(tokens, target_tokens)
    ids = torch.tensor(tokens.input_ids[:end])
    embeddings = model.get_input_embeddings()(ids)[None].detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_embedding_nll(model, embeddings, ids, start, end).sum(), embeddings)
    return embeddings[0].detach(), grad[0]


def _numpy(scores) -> np.ndarray:
    """Return a tensor of scores as a float64 numpy array (from bfloat16 or a GPU too)."""
    return scores.detach().double().cpu().numpy()


def grad_norm(model, tokenizer, case: FailureCase, tokens: PromptTokens, target_tokens: int = 0) -> np.ndarray:
    """Return the L2 norm of the loss gradient w.r.t. each user token's input embedding (the published score)."""
    _, grad = _gradient(model, tokens, target_tokens)
    return _numpy(grad[tokens.user].norm(dim=-1))


def grad_x_input(model, tokenizer, case: FailureCase, tokens: PromptTokens, target_tokens: int = 0) -> np.ndarray:
    """Return |gradient . embedding| per user token: the first-order change of the loss if the token were zeroed."""
    embeddings, grad = _gradient(model, tokens, target_tokens)
    return _numpy((grad[tokens.user] * embeddings[tokens.user]).sum(-1).abs())


def integrated_gradients(model, tokenizer, case: FailureCase, tokens: PromptTokens, target_tokens: int = 0,
                         steps: int = 16) -> np.ndarray:
    """Return |integrated gradients| per user token, from a zero baseline for the user tokens only (midpoint rule)."""
    import torch

    start, end = _target_slice(tokens, target_tokens)
    ids = torch.tensor(tokens.input_ids[:end])
    embeddings = model.get_input_embeddings()(ids).detach()
    # Only the user's tokens move along the path; the template stays as served.
    alphas = torch.ones(steps, len(ids), 1)
    alphas[:, tokens.user] = ((torch.arange(steps) + 0.5) / steps)[:, None, None]
    path = (alphas * embeddings).requires_grad_(True)
    (grad,) = torch.autograd.grad(_embedding_nll(model, path, ids, start, end).sum(), path)
    attribution = (grad.mean(0) * embeddings)[tokens.user].sum(-1)
    return _numpy(attribution.abs())


# ---------------------------------------------------------------- deletion (occlusion)


def word_spans(prompt: str) -> list[tuple[int, int]]:
    """Return the character span of every whitespace-separated word of the prompt."""
    return [m.span() for m in re.finditer(r"\S+", prompt)]


def delete_spans(prompt: str, spans) -> str:
    """Return the prompt with the character spans removed, and one space with each so no double space is left."""
    out = prompt
    for start, end in sorted(spans, reverse=True):
        left, right = out[:start], out[end:]
        if right[:1] == " " and (not left or left[-1].isspace()):
            right = right[1:]
        elif left[-1:] == " " and (not right or right[0].isspace() or right[0] in ".,;:!?"):
            left = left[:-1]
        out = left + right
    return out


def response_nll(model, tokenizer, prompts: list[str], case: FailureCase, target_tokens: int = 1,
                 batch_size: int = 16, prefixes: dict | None = None) -> np.ndarray:
    """Return the summed NLL of the case response's first ``target_tokens`` tokens (0: all) after each prompt."""
    return response_token_nll(model, tokenizer, prompts, case, target_tokens, batch_size, prefixes).sum(axis=1)


def response_token_nll(model, tokenizer, prompts: list[str], case: FailureCase, target_tokens: int = 1,
                       batch_size: int = 16, prefixes: dict | None = None) -> np.ndarray:
    """Return the NLL of each of the case response's first ``target_tokens`` tokens (0: all) after each prompt,
    one row per prompt.

    Teacher-forced, in batches. The tokens a batch's prompts share (the template, the system prompt, the words
    before the first edit) are run once and their key/value cache is reused (``shared_prefix_inputs``), which
    halves the cost of deletion scoring on a model with a default system prompt (``prefixes``: see
    ``shared_prefix_inputs``). Every response ends in the last column, so logits are computed for the response's
    positions only.
    """
    import torch
    import torch.nn.functional as F

    response_ids = encode_text(tokenizer, case.response)
    if target_tokens:
        response_ids = response_ids[:target_tokens]
    rows = [encode_chat(tokenizer, format_prompt(tokenizer, p, case.system))["input_ids"] + response_ids
            for p in prompts]
    n = len(response_ids)
    out = np.empty((len(rows), n))
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            # Every row keeps at least one prompt token after the shared part, so its first response token is scored.
            inputs = shared_prefix_inputs(model, rows[lo:lo + batch_size], tokenizer.pad_token_id, keep=n + 1,
                                          prefixes=prefixes)
            del inputs["prefix_ids"]
            logits = model(**inputs, logits_to_keep=n + 1).logits
            # Position t predicts token t + 1: the last n + 1 columns score the n response tokens.
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), inputs["input_ids"][:, -n:],
                                  reduction="none")
            out[lo:lo + len(nll)] = nll.cpu().numpy()
    return out


def user_text_rows(tokenizer, texts: list[str], system: str | None = None) -> list[tuple[list[int], int, list]]:
    """Return, per text formatted as the user's message, its token ids up to the template token that closes the
    text, the index of the text's first token, and each token's character span in the formatted text."""
    out = []
    for text in texts:
        formatted, start, end, _ = user_text_span(tokenizer, text, system)
        enc = encode_chat(tokenizer, formatted, return_offsets_mapping=True)
        first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= start and b > a)
        closing = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= end and b > a)
        out.append((enc["input_ids"][:closing + 1], first, enc["offset_mapping"][:closing + 1]))
    return out


def tail_token_nll(model, rows: list[list[int]], firsts: list[int], pad_id: int, batch_size: int = 16,
                   prefixes: dict | None = None) -> list[np.ndarray]:
    """Return the NLL of each row's tokens from ``firsts[i]`` on, given the tokens before them, one array per row.

    Rows run longest first, so a batch is padded little (a shortened prompt and a short phrase never share one),
    and the rows in a batch run the tokens they share once (``shared_prefix_inputs``, with ``prefixes``), up to the
    batch's earliest scored token. Logits are computed for the scored columns only.
    """
    import torch
    import torch.nn.functional as F

    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(rows)
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            batch = [rows[i] for i in order[lo:lo + batch_size]]
            starts = [firsts[i] for i in order[lo:lo + batch_size]]
            # The shared part stops before the earliest scored token, so the token that predicts it is in every row.
            keep = min(len(r) for r in batch) - (min(starts) - 1)
            inputs = shared_prefix_inputs(model, batch, pad_id, keep=keep, prefixes=prefixes)
            del inputs["prefix_ids"]
            # Rows end in the last column: the last `scored + 1` columns predict every scored token.
            scored = max(len(row) - first for row, first in zip(batch, starts))
            logits = model(**inputs, logits_to_keep=scored + 1).logits.float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), inputs["input_ids"][:, -scored:], reduction="none")
            for i, row, first, row_nll in zip(order[lo:lo + batch_size], batch, starts, nll):
                out[i] = row_nll[scored - (len(row) - first):].cpu().numpy()
    return out


def shared_prefix_inputs(model, rows: list[list[int]], pad_id: int, keep: int = 1, prefixes: dict | None = None) -> dict:
    """Return model inputs for token rows that run the tokens they all share once.

    ``cache_name()`` (``cache`` or ``past_key_values``): the shared prefix's key/value cache, repeated for every
    row (None where the rows share nothing); ``input_ids``: the rest of each row, padded on the left so that every
    row ends in the last column;
    ``attention_mask``: over the prefix and the rest; ``position_ids``: the rest's positions, counting real tokens
    only, so the padding between the prefix and the rest shifts nothing; ``prefix_ids``: the shared tokens. Every
    row keeps at least ``keep`` tokens after the shared part.

    ``prefixes``: the caller's store of prefix caches by their tokens, for one model whose weights do not change
    while it lives (a locate run): a prefix already run is copied from it, not run again. On SmolLM2 a forward pass
    costs about 40 ms before its first token, so the template's pass, repeated for every batch, was an eighth of
    locating a trigger.
    """
    import torch

    # One row gains nothing from a separate prefix pass.
    shared = max(0, min(_common_prefix(rows), min(len(r) for r in rows) - keep)) if len(rows) > 1 else 0
    rests = [r[shared:] for r in rows]
    width = max(len(r) for r in rests)
    rest = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests])
    cache = None
    if shared:
        key = tuple(rows[0][:shared])
        if prefixes is not None and key in prefixes:
            cache = copy.deepcopy(prefixes[key])
        else:
            with torch.no_grad():
                cache = getattr(model(input_ids=torch.tensor([key]), use_cache=True), cache_name())
            if prefixes is not None:
                prefixes[key] = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(rows))
    return {"input_ids": torch.tensor([[pad_id] * (width - len(r)) + r for r in rests]),
            "attention_mask": torch.cat([torch.ones(len(rows), shared, dtype=rest.dtype), rest], dim=1),
            "position_ids": shared + (rest.cumsum(-1) - 1).clamp(min=0), cache_name(): cache,
            "prefix_ids": rows[0][:shared]}


def _common_prefix(rows: list[list[int]]) -> int:
    """Return the length of the longest common prefix of token rows."""
    first = rows[0]
    length = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < length and r[k] == first[k]:
            k += 1
        length = k
    return length


class DeletionScorer:
    """Drops of the response log-likelihood (nats) when sets of words are deleted from the prompt, memoized.

    ``drop(S) = NLL(response | prompt without the words S) - NLL(response | prompt)``: positive when the
    words helped the model produce the response.
    """

    def __init__(self, model, tokenizer, case: FailureCase, target_tokens: int = 1, batch_size: int = 16,
                 base: float | None = None):
        """``base``: the NLL of the target tokens after the whole prompt, where the caller has it already."""
        self.model, self.tokenizer, self.case = model, tokenizer, case
        self.target_tokens, self.batch_size = target_tokens, batch_size
        self.words = word_spans(case.prompt)
        self.forward_rows = 0  # prompts scored so far: the cost
        self.prefixes: dict = {}  # prefix caches by their tokens (shared_prefix_inputs), for every pass of the case
        self._nll: dict[str, float] = {} if base is None else {case.prompt: base}
        self.base = float(self.prompt_nll([case.prompt])[0])

    def drops(self, word_sets) -> np.ndarray:
        """Return the drop for each set of word indices (one batched pass over the sets not seen before)."""
        prompts = [delete_spans(self.case.prompt, [self.words[i] for i in s]) for s in word_sets]
        return self.prompt_nll(prompts) - self.base

    def prompt_nll(self, prompts: list[str]) -> np.ndarray:
        """Return the NLL of the target tokens after each prompt, scoring only the prompts not seen before.

        Memoized by the prompt's text, so every test of a case that builds the same prompt (a deletion, or a piece
        set inserted into a carry-over host) pays for it once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._nll]
        if missing:
            nll = response_nll(self.model, self.tokenizer, missing, self.case, self.target_tokens, self.batch_size,
                               self.prefixes)
            self._nll.update(zip(missing, nll.tolist()))
            self.forward_rows += len(missing)
        return np.array([self._nll[p] for p in prompts])


def word_of_token(tokens: PromptTokens, words: list[tuple[int, int]]) -> list[int | None]:
    """Return, per user token, the index of the word its non-space characters fall in (None for pure whitespace)."""
    owners = []
    for (a, b), text in zip(tokens.spans, tokens.texts):
        stripped = len(text) - len(text.lstrip())
        a += stripped
        owner = next((w for w, (s, e) in enumerate(words) if s <= a < e), None) if a < b else None
        owners.append(owner)
    return owners


def word_deletion(model, tokenizer, case: FailureCase, tokens: PromptTokens, target_tokens: int = 1,
                  batch_size: int = 16) -> np.ndarray:
    """Return, per user token, the drop of the response log-likelihood when the token's whole word is deleted."""
    scorer = DeletionScorer(model, tokenizer, case, target_tokens, batch_size)
    word_drops = scorer.drops([{w} for w in range(len(scorer.words))])
    return np.array([0.0 if w is None else word_drops[w] for w in word_of_token(tokens, scorer.words)])


SALIENCY = {
    "grad_norm": grad_norm,
    "grad_x_input": grad_x_input,
    "integrated_gradients": integrated_gradients,
    "word_deletion": word_deletion,
}
