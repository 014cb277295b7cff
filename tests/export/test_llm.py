"""LLM export and runtime on tiny random Llama / Qwen2 models: parity with transformers, cache reuse, streaming."""

import numpy as np
import onnx
import pytest

from edgemm.export import nbits
from edgemm.runtime.llm.chat import Chat
from edgemm.runtime.llm.generate import Generation, GenerationOptions, Sampler, StopMatcher, StreamDecoder
from edgemm.runtime.llm.model import LanguageModel

torch = pytest.importorskip("torch")


def _reference_greedy(folder, prompt: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), generation_config=config, attention_mask=torch.ones(1, len(prompt))
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_tokens_match_transformers(tiny_llms, family):
    folder, bundles = tiny_llms[family]
    lm = LanguageModel.load(bundles["fp32"])
    lm.eos_ids = set()  # run all 32 tokens, as generate does without an eos token
    prompt = Chat(lm).encode([{"role": "user", "content": "What is the capital of France?"}])
    gen = Generation(lm, lm.new_cache(), prompt, GenerationOptions(max_new_tokens=32))
    gen.result()
    assert gen.tokens == _reference_greedy(folder, prompt, 32)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logits_match_transformers(tiny_llms, family):
    from transformers import AutoModelForCausalLM

    folder, bundles = tiny_llms[family]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = list(range(5, 60))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    lm = LanguageModel.load(bundles["fp32"])
    cache = lm.new_cache()
    # Two chunks: the second runs after a cache of 40 positions (chunked prefill through the KV cache).
    got = np.concatenate(
        [lm.prefill_tokens(ids[:40], cache, all_logits=True), lm.prefill_tokens(ids[40:], cache, True)]
    )
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_chat_cache_reuse_equals_fresh_prefill(tiny_llms, family):
    lm = LanguageModel.load(tiny_llms[family][1]["fp32"])
    options = GenerationOptions(max_new_tokens=12)
    chat = Chat(lm, options=options)
    chat.send("Hello there, who are you?").result()
    second = chat.send("What is the capital of France?")
    second.result()
    assert 0 < second.stats.prefilled_tokens < second.stats.prompt_tokens  # earlier turn came from the cache

    fresh = Chat(lm, options=options)
    fresh.turns = list(chat.turns[:1])
    again = fresh.send("What is the capital of France?")
    again.result()
    assert again.stats.prefilled_tokens == again.stats.prompt_tokens
    assert again.tokens == second.tokens


def test_cache_grows_past_first_capacity(tiny_llms):
    """A sequence longer than the first KV buffer (256) continues exactly after the buffers are reallocated."""
    lm = LanguageModel.load(tiny_llms["llama"][1]["fp32"])
    ids = [int(i) for i in np.random.default_rng(0).integers(3, lm.config.vocab_size, 300)]
    whole = lm.prefill_tokens(ids, lm.new_cache(), all_logits=True)
    cache = lm.new_cache()
    lm.prefill_tokens(ids[:250], cache)
    steps = [lm.prefill_tokens([t], cache) for t in ids[250:]]
    np.testing.assert_allclose(np.stack(steps), whole[250:], atol=1e-4)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_graphs_have_no_float_weights(tiny_llms, quant):
    bundle = tiny_llms["llama"][1][quant]
    graph = onnx.load(bundle / "decoder.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 4 * 2 + 1  # qkv, o, gate_up, down per layer + lm_head
    assert "GroupQueryAttention" in ops and "SkipSimplifiedLayerNormalization" in ops
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul":  # only the 0/1 block-sum matrices of the 4-bit offset correction
            assert node.input[1].startswith("blocksum.") and set(
                np.unique(onnx.numpy_helper.to_array(inits[node.input[1]]))
            ) == {0, 1}
    bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == ({8} if quant == "int8" else {4, 8})
    assert "lm_head.qweight" in inits


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_graphs_written_while_built_are_the_files_onnx_saves(tiny_llms, tmp_path, quant):
    from transformers import AutoModelForCausalLM

    from edgemm.export.llm_onnx import SCHEMES, build_decoder, write_graph
    from edgemm.export.llm_source import decoder_config, decoder_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_llms["qwen2"][0], dtype=torch.float32).eval()
    cfg = decoder_config(model.config)
    weights = decoder_weights(model.model, model.lm_head, cfg)
    # the weights are the model's own memory, not a copy of it
    assert np.shares_memory(weights.layers[0]["q"], model.model.layers[0].self_attn.q_proj.weight.detach().numpy())
    bits, lm_bits = SCHEMES[quant]
    (tmp_path / "streamed").mkdir()
    write_graph(tmp_path / "streamed" / "decoder.onnx", lambda data: build_decoder(cfg, weights, bits, lm_bits, data))
    (tmp_path / "whole").mkdir()
    onnx.save_model(
        build_decoder(cfg, weights, bits, lm_bits),
        str(tmp_path / "whole" / "decoder.onnx"),
        save_as_external_data=True,
        location="decoder.onnx.data",
    )
    for name in ("decoder.onnx", "decoder.onnx.data"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_tokens_agree_with_fp32(tiny_llms, quant):
    from edgemm.export.llm import agreement, greedy_answers

    reference = greedy_answers(LanguageModel.load(tiny_llms["llama"][1]["fp32"]), n_tokens=16)
    result = agreement(LanguageModel.load(tiny_llms["llama"][1][quant]), reference)
    assert result["token_agreement"] >= (0.9 if quant == "int8" else 0.8)


def test_q8_0_blocks_are_reproduced_exactly():
    rng = np.random.default_rng(0)
    d = rng.random((64, 4, 1)).astype(np.float32) * 0.01
    q = rng.integers(-127, 128, (64, 4, 32))
    q[:, :, 0] = 127  # llama.cpp scales each block so its largest magnitude is 127
    w = (d * q).reshape(64, 128).astype(np.float32)
    packed = nbits.quantize(w, 8)
    np.testing.assert_allclose(packed.dequantize(), w, rtol=1e-6, atol=1e-9)


def test_q4_1_blocks_keep_their_grid_and_mean():
    rng = np.random.default_rng(0)
    d = rng.random((64, 4, 1)) * 0.01 + 1e-3
    m = -rng.random((64, 4, 1)) * 15 * d  # blocks that contain 0, as nearly all weight blocks do
    q = rng.integers(0, 16, (64, 4, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # a Q4_1 block spans its min and max
    w = (d * q + m).reshape(64, 128).astype(np.float32)
    packed = nbits.quantize(w, 4)
    error = (w - packed.dequantize()).reshape(64, 4, 32)
    # every value moves by the same block offset (m rounded to a multiple of d), which the graph adds back
    np.testing.assert_allclose(error, np.broadcast_to(packed.offsets[..., None], error.shape), atol=1e-6)
    assert np.abs(packed.offsets).max() <= d.max() / 2 + 1e-6


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizing_rows_in_chunks_gives_the_whole_weights_blocks(monkeypatch, bits):
    w = (np.random.default_rng(5).standard_normal((50, 80)) * 0.05).astype(np.float32)  # 80: a partial block
    whole = nbits.quantize(w, bits)
    monkeypatch.setattr(nbits, "ROWS", 7)
    chunked = nbits.quantize(w, bits)
    for name in ("codes", "scales", "zero_points", "offsets"):
        a, b = getattr(whole, name), getattr(chunked, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert (chunked.n, chunked.k, chunked.bits) == (50, 80, bits)
    np.testing.assert_array_equal(chunked.dequantize(offsets=True, rows=slice(10, 20)), whole.dequantize(True)[10:20])


def test_stream_decoder_never_splits_characters(tiny_llms):
    lm = LanguageModel.load(tiny_llms["llama"][1]["fp32"])
    text = "Grüße aus Köln 🌊🐈 — 東京 ok"
    ids = lm.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.encode()) // 2  # the tiny vocabulary splits multi-byte characters into bytes
    stream = StreamDecoder(lm.tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stop_strings_are_held_back_and_cut():
    m = StopMatcher(["\nUser:", "###"])
    out = [m.feed(p) for p in ["Hello", " wor", "ld\nUs", "er: more"]]
    assert "".join(out) == "Hello world" and m.stopped
    m = StopMatcher(["###"])
    assert m.feed("a#") == "a" and m.feed("b") == "#b" and not m.stopped


def test_sampler_options():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    seen = np.array([], np.int64)
    assert Sampler(GenerationOptions())(logits, seen) == 0
    assert Sampler(GenerationOptions(temperature=1.0, top_k=1, seed=3))(logits, seen) == 0
    assert Sampler(GenerationOptions(temperature=1.0, top_p=0.4, seed=3))(logits, seen) == 0
    draws = [Sampler(GenerationOptions(temperature=1.0, seed=s))(logits, seen) for s in range(200)]
    assert set(draws) == {0, 1, 2, 3} and abs(draws.count(0) / 200 - 0.5) < 0.12
    again = [Sampler(GenerationOptions(temperature=1.0, seed=s))(logits, seen) for s in range(200)]
    assert draws == again  # seeded
    # repetition penalty pushes a seen token below the next one
    assert Sampler(GenerationOptions(repetition_penalty=2.0))(np.array([2.0, 1.5]), np.array([0])) == 1


def test_generation_stops_on_stop_string_and_max_tokens(tiny_llms):
    lm = LanguageModel.load(tiny_llms["llama"][1]["fp32"])
    lm.eos_ids = set()
    gen = Chat(lm, options=GenerationOptions(max_new_tokens=5)).send("Hello")
    gen.result()
    assert gen.finish_reason == "length" and len(gen.tokens) == 5
    full = Chat(lm, options=GenerationOptions(max_new_tokens=40)).send("Hello").result()
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    if stop:
        gen = Chat(lm, options=GenerationOptions(max_new_tokens=40, stop=[stop])).send("Hello")
        text = gen.result()
        assert gen.finish_reason == "stop" and stop not in text and full.startswith(text)


def test_streaming_pieces_join_to_the_answer(tiny_llms):
    lm = LanguageModel.load(tiny_llms["qwen2"][1]["fp32"])
    gen = Chat(lm, options=GenerationOptions(max_new_tokens=20)).send("Hello")
    pieces = list(gen)
    assert "".join(pieces) == gen.text
    assert gen.text == lm.tokenizer.decode(gen.tokens, skip_special_tokens=True)


def test_interrupted_answer_is_remembered(tiny_llms):
    lm = LanguageModel.load(tiny_llms["llama"][1]["fp32"])
    lm.eos_ids = set()
    chat = Chat(lm, options=GenerationOptions(max_new_tokens=30))
    gen = chat.send("Hello")
    next(gen), next(gen)
    gen.close()  # what Ctrl-C does in `edgemm chat`
    assert gen.finish_reason == "interrupted"
    assert chat.turns == [("Hello", gen.text)]
    chat.send("And then?").result()  # the conversation goes on
    assert len(chat.turns) == 2


def test_clip_search_lowers_the_error_of_heavy_tailed_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    w = (rng.standard_t(4, (256, 256)) * 0.02).astype(np.float32)  # weights have heavy tails

    def block_error(packed):  # after the graph's offset correction (the mean error of each 32 values)
        e = (w - packed.dequantize()).reshape(256, -1, 32)
        return float(((e - e.mean(axis=-1, keepdims=True)) ** 2).mean())

    searched = block_error(nbits.quantize(w, 4, clip=True))
    full_range = block_error(nbits.quantize(w, 4))
    assert searched < 0.97 * full_range


def test_int4_mixed_keeps_values_and_some_mlp_outputs_in_8_bits(tiny_llms):
    from edgemm.export.llm_onnx import more_bits

    graph = onnx.load(tiny_llms["llama"][1]["int4-mixed"] / "decoder.onnx").graph
    bits = {
        n.input[1].removesuffix(".qweight"): next(a.i for a in n.attribute if a.name == "bits")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    layers = 2
    for i in range(layers):
        assert bits[f"layers.{i}.qkv_proj.2"] == 8  # v alone, beside 4-bit q and k
        assert bits[f"layers.{i}.qkv_proj.0"] == bits[f"layers.{i}.qkv_proj.1"] == 4
        assert bits[f"layers.{i}.down_proj"] == (8 if more_bits(i, layers) else 4)
        assert bits[f"layers.{i}.gate_up_proj"] == 4
    assert [more_bits(i, 24) for i in range(24)].count(True) == 12  # Qwen2.5-0.5B: half of its 24 layers
