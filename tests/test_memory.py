"""The memory check's estimate against the peaks measured in the README's cost-model table. No model is run: each
checkpoint is a config.json and a safetensors header that claims the parameters, with no data."""

import json
import struct
from dataclasses import replace

import pytest

from patcher.errors import PatcherInputError
from patcher.modeling import Work, check_memory, memory_estimate, model_shape
from patcher.patch import PatchConfig, step_work

MIB = 1 << 20

# The README's cost-model table: float32 Llamas on a CPU, one LoRA patch step (r=32) over 8 + 8 + 8 rows, peaks in MB
# (of 2^20 bytes) above the resident set before the model was built. Columns: layers, hidden, intermediate, vocab,
# parameters, tokens per row, response positions, inference peak, patch-step peak, with gradient checkpointing.
# The rows are 79 tokens with SmolLM2's tokenizer and 112 with the tiny model's 2,048-token one, which also makes
# its responses 20 positions wide instead of 16 (the batch's shape, from bench/cost_model.py's training_rows).
COST_MODEL = {
    "tiny": (4, 192, 512, 2048, 2.2e6, 112, 20, 95, 427, 278),
    "30m": (8, 384, 1024, 49152, 31.5e6, 79, 16, 471, 1447, 897),
    "70m": (16, 512, 1280, 49152, 69.2e6, 79, 16, 683, 3167, 1548),
    "smollm2": (30, 576, 1536, 49152, 134.5e6, 79, 16, 1028, 6484, 2580),
    "smollm2, second run": (30, 576, 1536, 49152, 134.5e6, 79, 16, 965, 6584, 2577),
    "360m": (32, 960, 2560, 49152, 361.8e6, 79, 16, 1855, 11636, 4718),
}


def checkpoint(path, config: dict, parameters: int):
    """Return a checkpoint directory with ``config`` and a safetensors header claiming ``parameters`` (no data)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    header = json.dumps({"model.weight": {"dtype": "F32", "shape": [parameters], "data_offsets": [0, 4 * parameters]}})
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return path


def llama(tmp_path, name: str, layers: int, hidden: int, intermediate: int, vocab: int, parameters: float):
    """Return a Llama checkpoint directory of that shape, with no weights."""
    config = {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": hidden,
              "intermediate_size": intermediate, "vocab_size": vocab}
    return checkpoint(tmp_path / name.replace(", ", "-"), config, int(parameters))


@pytest.mark.parametrize("name", COST_MODEL)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_patch_step_estimate_is_at_least_the_measured_peak_and_close_to_it(tmp_path, name, checkpointing):
    layers, hidden, intermediate, vocab, parameters, tokens, responses, _, peak, peak_checkpointed = COST_MODEL[name]
    path = llama(tmp_path, name, layers, hidden, intermediate, vocab, parameters)
    work = Work("lora", rows=24, tokens=tokens, response_tokens=responses, gradient_checkpointing=checkpointing)
    measured = (peak_checkpointed if checkpointing else peak) * MIB
    estimate = sum(memory_estimate(path, "float32", work).values())
    assert measured <= estimate <= 1.5 * measured, (name, estimate / MIB, measured / MIB)


@pytest.mark.parametrize("name", COST_MODEL)
def test_inference_estimate_is_at_least_the_measured_peak(tmp_path, name):
    # The measured forward kept the logits of 17 positions, the estimate counts every position's: an upper bound.
    layers, hidden, intermediate, vocab, parameters, tokens, _, peak, _, _ = COST_MODEL[name]
    path = llama(tmp_path, name, layers, hidden, intermediate, vocab, parameters)
    estimate = sum(memory_estimate(path, "float32", Work(rows=24, tokens=tokens)).values())
    assert peak * MIB <= estimate <= 3 * peak * MIB, (name, estimate / MIB, peak)


# The README's GPU cost model: random-init bfloat16 Llamas on one H100, the same 24 x 79-token batch, peaks in MB of
# torch.cuda.max_memory_allocated (weights included). Columns as COST_MODEL's.
GPU_COST_MODEL = {
    "360m": (32, 960, 2560, 49152, 361_821_120, 79, 16, 918, 4996, 1327),
    "1b": (16, 2048, 8192, 128256, 1_235_814_400, 79, 16, 2866, 8132, 3441),
    "3b": (28, 3072, 8192, 128256, 3_212_749_824, 79, 16, 6636, 17893, 7710),
    "8b": (32, 4096, 14336, 128256, 8_030_261_248, 79, 16, 15825, 34904, 17587),
}


@pytest.mark.parametrize("name", GPU_COST_MODEL)
def test_estimate_errs_on_the_safe_side_of_the_gpu_peaks(tmp_path, name):
    # Fitted to CPU resident sets, which keep freed heap; a GPU's peak is the live tensors, so the estimate is higher
    # (a job the check admits fits) but not absurdly so (it refuses little that would fit).
    layers, hidden, intermediate, vocab, parameters, tokens, responses, inference, peak, checkpointed = GPU_COST_MODEL[name]
    path = llama(tmp_path, name, layers, hidden, intermediate, vocab, parameters)
    for work, measured in ((Work(rows=24, tokens=tokens), inference),
                           (Work("lora", rows=24, tokens=tokens, response_tokens=responses), peak),
                           (Work("lora", rows=24, tokens=tokens, response_tokens=responses, gradient_checkpointing=True),
                            checkpointed)):
        estimate = sum(memory_estimate(path, "bfloat16", work).values()) / MIB
        assert measured <= estimate <= 2.5 * measured, (name, work, estimate, measured)


def test_estimate_grows_with_the_work_and_halves_its_weights_in_bfloat16(tmp_path):
    path = llama(tmp_path, "8b", 32, 4096, 14336, 128256, 8.03e9)
    lora = step_work(PatchConfig(out=None))
    parts = memory_estimate(path, "bfloat16", lora)
    assert parts["weights"] == 2 * 8.03e9 == memory_estimate(path, "float32", lora)["weights"] / 2
    checkpointed = memory_estimate(path, "bfloat16", replace(lora, gradient_checkpointing=True))
    assert checkpointed["activations"] < parts["activations"] / 3 and checkpointed["training"] == parts["training"]
    full = memory_estimate(path, "bfloat16", replace(lora, kind="full"))
    assert full["training"] == 4 * parts["weights"] and full["activations"] == parts["activations"]
    inference = memory_estimate(path, "bfloat16", Work())
    assert inference["training"] == 0 and sum(inference.values()) < sum(parts.values())


def test_shape_is_read_from_llama_and_gpt2_configs(tmp_path):
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_inner": None, "vocab_size": 50257}
    assert model_shape(checkpoint(tmp_path / "gpt2", gpt2, 124_000_000)) == (12, 768, 3072, 50257)
    llama_config = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 100}
    assert model_shape(checkpoint(tmp_path / "llama", llama_config, 10_000)) == (2, 64, 128, 100)
    unusual = checkpoint(tmp_path / "unusual", {"n_layers": 2, "d_model": 64, "vocab_size": 100}, 10_000)
    assert model_shape(unusual) is None and memory_estimate(unusual, "float32", Work()) is None


def test_refusal_gives_the_estimate_its_parts_and_the_remedies(tmp_path, monkeypatch):
    from patcher import modeling

    path = llama(tmp_path, "8b", 32, 4096, 14336, 128256, 8.03e9)
    monkeypatch.setattr(modeling, "available_memory", lambda device: (80 << 30, "free on the GPU"))
    work = step_work(PatchConfig(out=None))
    with pytest.raises(PatcherInputError) as refused:
        check_memory(path, "float32", "cuda", work)
    message = str(refused.value)
    assert "\n" not in message and "needs about" in message and "8.03e+09 parameters x 4 bytes in float32" in message
    for part in ("LoRA adapter and AdamW", "activations", "vocabulary-wide tensors", "80.0 GiB is available"):
        assert part in message
    assert message.endswith("use --dtype bfloat16, --gradient-checkpointing, a smaller --batch-size, "
                            "a machine with more memory")
    check_memory(path, "bfloat16", "cuda", replace(work, gradient_checkpointing=True))
    with pytest.raises(PatcherInputError, match="LoRA instead of --full"):
        check_memory(path, "bfloat16", "cuda", replace(work, kind="full", gradient_checkpointing=True))


def test_the_readme_worked_example(tmp_path):
    # An 8B Llama-3.1 shape patched with LoRA in bfloat16 at the default batch (README, Memory check).
    path = llama(tmp_path, "8b", 32, 4096, 14336, 128256, 8_030_261_248)
    work = step_work(PatchConfig(out=None))
    gib = {checkpointing: sum(memory_estimate(path, "bfloat16", replace(work, gradient_checkpointing=checkpointing))
                              .values()) / (1 << 30) for checkpointing in (False, True)}
    assert (work.rows, work.tokens, round(gib[False], 1), round(gib[True], 1)) == (16, 132, 45.2, 25.0)
    assert step_work(PatchConfig(out=None, beta_harm=5.0)).rows == 24  # D_harm's rows join the step
    assert round(sum(memory_estimate(path, "bfloat16", Work()).values()) / (1 << 30), 1) == 20.7
