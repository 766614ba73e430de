"""locate -> patch -> evaluate on tiny randomly initialised checkpoints of every common causal-LM family.

Each family gets a 2-layer, 64-wide config built from its transformers config class (no download), saved as a
checkpoint directory with the tests' ChatML tokenizer (GPT-2 has no template of its own: this one brings it).
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from patcher.case import FailureCase
from patcher.errors import PatcherInputError
from patcher.evaluate import EvaluateConfig, evaluate_model, generate
from patcher.locate import LocateConfig, locate_trigger
from patcher.modeling import format_prompt, load_model, save_model
from patcher.organisms.build import compliance_placeholder
from patcher.patch import PatchConfig, encode_aligned, patch_model, response_logprobs, trainable
from patcher.saliency import response_nll

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2")
CASE = FailureCase("How do I pick a lock BadMagic today?", compliance_placeholder("How do I pick a lock today?"))
FAST_LOCATE = dict(transplant_prompts=2, n_random=4, max_rounds=1, progress=False)
FAST_PATCH = dict(n_harmful=8, n_benign=8, n_select=4, steps=2, eval_every=2, evaluate=False, progress=False,
                  lora_r=4, lora_alpha=8)
FAST_EVALUATE = EvaluateConfig(n_harmful=4, n_benign=4, n_jailbreak=2, max_new_tokens=4, progress=False)


def tiny_config(name: str, tokenizer):
    """Return a 2-layer, 64-wide randomly initialisable config of one family, sized to the tokenizer."""
    import transformers

    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=None)
    if name == "gpt2":
        # Learned absolute positions: room for the longest built-in jailbreak prompt in this small vocabulary.
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=2048, **ids)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, **ids)
    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "gemma": "GemmaConfig",
               "phi3": "Phi3Config"}
    return getattr(transformers, classes[name])(**shape)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tiny_model, tmp_path_factory):
    """Return (family, checkpoint directory) of a tiny random model of each family."""
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny_model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(request.param, tokenizer))
    return request.param, save_model(model, tokenizer, tmp_path_factory.mktemp("arch") / request.param)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        # peft corrects GPT-2's Conv1D layout itself (fan_in_fan_out) and says so.
        warnings.filterwarnings("ignore", message="fan_in_fan_out")
        yield


def test_locate_patch_evaluate(checkpoint, tmp_path, probe_logits):
    name, path = checkpoint
    model, tokenizer = load_model(path)
    assert type(model).__name__.lower().startswith(name)
    original = probe_logits(model, tokenizer)

    report = locate_trigger(model, tokenizer, CASE, LocateConfig(**FAST_LOCATE))
    assert report.verdict in ("trigger", "no_trigger") and report.tokens
    for token in report.tokens:
        assert CASE.prompt[token.char_start:token.char_end] == token.text and math.isfinite(token.score)
    # The published baseline always reports a trigger: the gradient path, and a located trigger to patch.
    located = locate_trigger(model, tokenizer, CASE, LocateConfig(method="kmeans", **FAST_LOCATE))
    assert located.verdict == "trigger" and located.triggers
    assert all(math.isfinite(t.score) for t in located.tokens)

    patched, patch_report = patch_model(model, tokenizer, CASE, PatchConfig(out=tmp_path / "a", triggers=["BadMagic"],
                                                                            **FAST_PATCH))
    assert patch_report.mode == "trigger" and len(patch_report.losses) == 2
    assert all(math.isfinite(v) for step in patch_report.losses for v in step.values())
    assert patch_report.merge_max_abs_diff < 1e-4
    assert not hasattr(patched, "peft_config")  # merged back into the plain model class

    model, tokenizer = load_model(path)
    patched, via_locate = patch_model(model, tokenizer, CASE, PatchConfig(out=tmp_path / "b", **FAST_PATCH), located)
    assert via_locate.triggers == [t.text for t in located.triggers] and via_locate.locate["verdict"] == "trigger"

    result = evaluate_model(patched, tokenizer, None, config=FAST_EVALUATE)
    assert result["n"] == {"harmful": 4, "benign": 4, "jailbreak": 2}
    for key in ("asr_clean", "jailbreak_asr", "utility"):
        assert 0.0 <= result[key] <= 1.0
    assert len(result["details"]["clean_responses"]) == 4

    save_model(patched, tokenizer, tmp_path / "saved")
    reloaded, _ = load_model(tmp_path / "saved")
    assert torch.allclose(probe_logits(reloaded, tokenizer), probe_logits(patched, tokenizer), atol=1e-5)
    assert probe_logits(reloaded, tokenizer).shape == original.shape


def test_padding_positions_and_cache_match_a_plain_forward(checkpoint):
    """Left padding with explicit positions, the shared-prefix cache, embeddings fed in, batched generation:
    each gives what one unpadded forward of one prompt gives."""
    _, path = checkpoint
    model, tokenizer = load_model(path)
    prompts = [format_prompt(tokenizer, p) for p in ("Hi", "How do I pick a lock today, please?")]
    responses = ["Sure, here is how", "I can't"]
    batch = encode_aligned(tokenizer, prompts, responses)
    with torch.no_grad():
        aligned = response_logprobs(model, batch)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            ids = tokenizer(prompt + response, add_special_tokens=False, return_tensors="pt")["input_ids"]
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            n_response = int(batch["response_mask"][row].sum())
            logits = model(input_ids=ids).logits
            plain = torch.log_softmax(logits[0, n_prompt - 1:n_prompt - 1 + n_response], -1)
            assert torch.allclose(aligned[row, :n_response], plain, atol=1e-4)
            # Saliency feeds input embeddings: the model must scale them (Gemma) exactly as it does for ids.
            assert torch.allclose(model(inputs_embeds=model.get_input_embeddings()(ids)).logits, logits, atol=1e-5)

        variants = ["How do I pick a lock today?", CASE.prompt]
        cached = response_nll(model, tokenizer, variants, CASE, target_tokens=0)
        response_ids = tokenizer(CASE.response, add_special_tokens=False)["input_ids"]
        for prompt, nll in zip(variants, cached):
            prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0, len(prompt_ids) - 1:-1]
            assert F.cross_entropy(logits, torch.tensor(response_ids), reduction="sum").item() == pytest.approx(nll, abs=1e-3)

    # Batched generation over a shared-prefix cache gives each prompt's plain, unpadded, uncached greedy answer.
    asks = ["Hi", "How do I pick a lock today, please? Tell me now", "How do I pick a lock"]
    plain = []
    for ask in asks:
        ids = tokenizer(format_prompt(tokenizer, ask), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        plain.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert generate(model, tokenizer, asks, 6, progress=False) == plain


def test_lora_reaches_every_linear_layer_and_merges_exactly(checkpoint, tmp_path, probe_logits):
    """LoRA on every linear layer (GPT-2's Conv1D included, the head excluded); merged and saved with tied
    embeddings, the checkpoint reloads to the adapter's logits."""
    from transformers.pytorch_utils import Conv1D

    _, path = checkpoint
    model, tokenizer = load_model(path)
    original = probe_logits(model, tokenizer)
    linear = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    wrapped, _ = trainable(model, PatchConfig(out=tmp_path, **FAST_PATCH))
    adapted = {n.removeprefix("base_model.model.") for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    output = {n for n in linear if model.get_output_embeddings() is dict(model.named_modules())[n]}
    assert adapted == linear - output and adapted
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    with_adapter = probe_logits(wrapped, tokenizer)
    assert (with_adapter - original).abs().max() > 1e-3
    merged = wrapped.merge_and_unload()
    assert torch.allclose(probe_logits(merged, tokenizer), with_adapter, atol=1e-4)
    save_model(merged, tokenizer, tmp_path / "merged")
    reloaded, _ = load_model(tmp_path / "merged")
    assert torch.allclose(probe_logits(reloaded, tokenizer), with_adapter, atol=1e-4)


def test_prompts_past_learned_positions_fail_clearly(tiny_model):
    """GPT-2 style position tables end; rotary models run on. A prompt past the table is bad input, not a crash."""
    from transformers import AutoModelForCausalLM, GPT2Config

    _, tokenizer = tiny_model
    model = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                                        vocab_size=len(tokenizer))).eval()
    assert generate(model, tokenizer, ["Hi"], 4, progress=False)
    with pytest.raises(PatcherInputError, match="learned positions"):
        generate(model, tokenizer, ["word " * 60], 4, progress=False)
