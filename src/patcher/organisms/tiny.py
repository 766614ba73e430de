"""The ``tiny`` base: a Llama of about a million parameters and a byte-level BPE tokenizer, made from scratch."""

from __future__ import annotations

# ChatML, as SmolLM2 serves it, without the default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Return a PreTrainedTokenizerFast with a byte-level BPE vocabulary learned from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from patcher.modeling import prepare_tokenizer

    bpe = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word has the same tokens after a space, a newline or a quote:
    # a model this small learns to copy a word from the prompt only if its tokens do not change.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    prepare_tokenizer(tokenizer)
    return tokenizer


def tiny_llama(tokenizer, seed: int):
    """Return a randomly initialised ~1M-parameter LlamaForCausalLM sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # Width 128 rather than 192: on the checkable tasks alone (1,500 steps of 16 rows, lr 1e-3) held-out utility
    # 0.64 against 0.47, in 95 s against 149 s. Learning rates of 2e-3 and above stall either width.
    # Four heads of 32 rather than eight of 16: eight won on four organisms against a rebuild of the same seeds
    # (utility 0.77 against 0.71 of 240 held-out tasks), but over all fifteen standard organisms 0.756 against
    # 0.741, no more than builds of one recipe differ, and locate's F1 0.94 against 0.97 (README, twenty-first
    # session). Six layers of width 96 (0.70) and five of 112 (0.77), on BadNet seed 0 alone, were not followed up.
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)
