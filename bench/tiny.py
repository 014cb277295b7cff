"""Tiny byte-level BPE tokenizers for random-weight models: the parity tests' tiny checkpoints and the benchmarks'
real-shape models need a working tokenizer and chat template, not a real vocabulary."""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = ("The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris.", "user assistant")


def tiny_tokenizer(
    extra_specials: tuple[str, ...] = (),
    eos_token: str = "<|im_end|>",
    chat_template: str = CHATML,
    corpus: tuple[str, ...] = CORPUS,
):
    """A ~400-token byte-level BPE (a transformers fast tokenizer) with ChatML's special tokens, ``extra_specials``
    and ``chat_template``; every byte is a token, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_specials]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(corpus) * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token=eos_token, pad_token="<|endoftext|>"
    )
    fast.chat_template = chat_template
    return fast
