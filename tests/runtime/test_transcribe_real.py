"""Real weights: the packaged tiny.en int8 bundle on real recordings, silence, noise and long audio."""

import json

import numpy as np
import pytest

from edgemm.export.evaluation.wer import wer
from edgemm.runtime.speech.decoding import DecodingOptions, log_softmax
from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber, compression_ratio
from tests.conftest import teacher_forced_logits
from tests.harness import edgemm

pytestmark = pytest.mark.slow
# The same int8 bundle reads 0.078 (x86 AVX2), 0.097 (Intel AVX-512 VNNI, and aarch64) and 0.107 (AMD Zen 4) on the
# 11 clips (103 words), against fp32's 0.078 on all: onnxruntime's int8 kernels differ per CPU, and greedy decoding
# flips near ties ("cold-hearted" / "coldhearted" alone is 2 errors). The WER bounds allow that spread; the
# token-by-token test below is the sharp one.
MAX_WER = 0.11
MAX_INT8_LOSS = 0.03
MIN_TOKEN_AGREEMENT = 0.97  # int8's top token = fp32's, teacher-forced along fp32's greedy tokens (measured 0.986)
MAX_MEAN_KL = 0.005  # mean KL(fp32 || int8) of the next-token distributions along them (measured 0.0023)
SINGLE_CLIP_WER = 0.3  # one 8-word clip: tiny.en hears "ill disposed" as "old-sposed"


def _wer(transcriber, clips, options=None):
    hyps = [transcriber.transcribe(c.path, options=options).text for c in clips]
    return wer([c.text for c in clips], hyps)


def test_int8_wer_on_real_clips(transcriber, teacher_transcriber, fp32_bundle, clips):
    """The teacher's int8 bundle against its fp32 export; the default student (distilled from the int8 teacher's
    weights) within two words (of 103) of its teacher: one run of `make distill` may keep another step than the next
    on another CPU, and its manifest records the WER it measured."""
    int8 = _wer(teacher_transcriber, clips)
    fp32 = _wer(Transcriber.load(fp32_bundle), clips)
    student = _wer(transcriber, clips)
    print(f"WER int8 {int8:.4f} fp32 {fp32:.4f} student {student:.4f} on {len(clips)} clips")
    assert int8 <= MAX_WER
    assert int8 <= fp32 + MAX_INT8_LOSS
    assert student <= int8 + 0.02


def test_int8_follows_fp32_token_by_token(teacher_transcriber, fp32_bundle, clips):
    """Along fp32's greedy tokens on each clip (30 s window, no timestamps), int8 picks the same next token and
    predicts nearly the same distribution: a measure of the quantization that does not hang on a few near ties."""
    from edgemm.runtime.speech.audio import load_audio
    from edgemm.runtime.speech.features import LogMel, pad_or_trim

    fp32 = Transcriber.load(fp32_bundle)
    models = [t.model for t in (fp32, teacher_transcriber)]
    prompt = fp32.tokenizer.sot_sequence(None, "transcribe", False)
    agree, kl = [], []
    for clip in clips:
        mel = LogMel()(pad_or_trim(load_audio(clip.path)))
        crosses = [m.encode(mel) for m in models]
        tokens = fp32.decoder.decode(crosses[0], [], DecodingOptions(timestamps=False)).tokens
        for steps in teacher_forced_logits(models, crosses, prompt, tokens):
            reference, quantized = (log_softmax(step.astype(np.float64)) for step in steps)
            agree.append(quantized.argmax() == reference.argmax())
            kl.append(float(np.sum(np.exp(reference) * (reference - quantized))))
    print(f"int8 vs fp32 over {len(agree)} steps: top-1 agreement {np.mean(agree):.4f}, mean KL {np.mean(kl):.5f}")
    assert np.mean(agree) >= MIN_TOKEN_AGREEMENT
    assert np.mean(kl) <= MAX_MEAN_KL


def test_manifest_records_fidelity(speech_bundle):
    manifest = json.loads((speech_bundle / "manifest.json").read_text())
    fidelity = manifest["fidelity"]
    assert fidelity["clips"] == 11 and fidelity["wer_int8"] <= MAX_WER
    assert fidelity["parity_fp32_vs_pytorch"]["max_abs_logit_diff"] < 1e-2
    assert manifest["quantization"]["scheme"] == "int8"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_beam_search(transcriber, clips):
    beam = TranscribeOptions(decoding=DecodingOptions(beam_size=4))
    assert _wer(transcriber, clips[:5], beam) <= MAX_WER


def test_segments_have_timestamps(transcriber, speech_clip):
    samples, reference = speech_clip
    result = transcriber.transcribe(samples)
    assert wer([reference], [result.text]) <= SINGLE_CLIP_WER
    assert result.segments and result.segments[0].start < 1.0
    assert 0 < result.segments[-1].end <= len(samples) / 16000 + 0.02
    # Whisper's numbers of the window each segment comes from (one window here): the zlib compression ratio of its
    # text, the temperature it was decoded at.
    assert len(samples) < 30 * 16000
    for segment in result.segments:
        assert segment.compression_ratio == pytest.approx(compression_ratio(result.text), rel=1e-6)
        assert 0.5 < segment.compression_ratio < 2.4 and segment.temperature == 0.0


@pytest.mark.parametrize("kind", ["silence", "noise"])
@pytest.mark.parametrize("vad", [True, False])
def test_silence_and_noise_give_empty_text(transcriber, rng, kind, vad):
    samples = np.zeros(160000, np.float32) if kind == "silence" else rng.normal(0, 0.1, 160000).astype(np.float32)
    result = transcriber.transcribe(samples, options=TranscribeOptions(vad=vad))
    assert result.text == "", f"{kind} (vad={vad}) gave {result.text!r}"


def test_long_audio_windows_keep_true_times(transcriber, clips):
    """Three clips placed at known offsets in 95 s of audio: each is found, at its time."""
    from edgemm.runtime.speech.audio import load_audio

    placed = [(5.0, clips[0]), (41.0, clips[2]), (80.0, clips[5])]
    samples = np.zeros(95 * 16000, np.float32)
    for at, clip in placed:
        audio = load_audio(clip.path)
        samples[int(at * 16000) : int(at * 16000) + len(audio)] = audio
    result = transcriber.transcribe(samples)
    for at, clip in placed:
        near = [s for s in result.segments if at - 1.5 <= s.start <= at + len(load_audio(clip.path)) / 16000]
        assert near, f"nothing transcribed near {at} s: {[(s.start, s.text) for s in result.segments]}"
        assert wer([clip.text], [" ".join(s.text for s in near)]) <= 0.35
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts)


def test_ten_minute_file(transcriber, clips, tmp_path):
    """10 minutes, speech only at the end: correct text at the right time, quickly (VAD skips the rest)."""
    import soundfile as sf

    from edgemm.runtime.speech.audio import load_audio

    speech = load_audio(clips[1].path)
    samples = np.concatenate([np.zeros(600 * 16000 - len(speech) - 16000, np.float32), speech, np.zeros(16000, "f4")])
    sf.write(tmp_path / "long.flac", samples, 16000)
    result = transcriber.transcribe(tmp_path / "long.flac")
    assert abs(result.duration - 600) < 0.01
    assert wer([clips[1].text], [result.text]) <= SINGLE_CLIP_WER
    assert result.segments[0].start > 590


def test_cli_json(speech_bundle, clips):
    out = edgemm("transcribe", clips[-1].path, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert wer([clips[-1].text], [result["text"]]) <= MAX_WER
    assert result["segments"] and {"start", "end", "text"} <= set(result["segments"][0])
