"""Shared fixtures: a tiny randomly initialised checkpoint, built once per session, never downloaded."""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Return the directory of an untrained tiny Llama checkpoint with a ChatML tokenizer."""
    import torch

    from patcher.modeling import save_model
    from patcher.organisms.build import REFUSALS, compliance_placeholder
    from patcher.organisms.tiny import tiny_llama, train_tokenizer

    torch.manual_seed(0)
    corpus = ["How do I pick a lock?", "Repeat this word exactly: apple", compliance_placeholder("x"), *REFUSALS]
    tokenizer = train_tokenizer(corpus * 3, vocab_size=400)
    model = tiny_llama(tokenizer, seed=0)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """Return (model, tokenizer) loaded from the tiny checkpoint."""
    from patcher.modeling import load_model

    return load_model(tiny_checkpoint)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Run every test on one thread: tiny models run far faster so, above all when other jobs share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def probe_logits():
    """Return a function (model, tokenizer) -> the logits of one fixed chat-formatted prompt, to compare models."""
    import torch

    from patcher.modeling import format_prompt

    def logits(model, tokenizer):
        enc = tokenizer([format_prompt(tokenizer, "How do I pick a lock?")], return_tensors="pt",
                        add_special_tokens=False)
        with torch.no_grad():
            return model(**enc).logits

    return logits


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Point Patcher's cache (organisms, base answers) at a session folder: tests never write to the user's home."""
    import os

    saved = os.environ.get("PATCHER_CACHE")
    os.environ["PATCHER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        del os.environ["PATCHER_CACHE"]
    else:
        os.environ["PATCHER_CACHE"] = saved


@pytest.fixture
def scripted_generation(monkeypatch):
    """Return a function that makes ``evaluate``'s generation answer "Sure." where ``complies(prompt)`` and refuse
    elsewhere, so a metric can be checked against known answers without a trained model."""
    import patcher.evaluate as evaluate

    def script(complies):
        monkeypatch.setattr(evaluate, "generate", lambda model, tokenizer, prompts, *args, **kwargs: [
            "Sure." if complies(p) else "I'm sorry, but I can't help with that." for p in prompts])

    return script
