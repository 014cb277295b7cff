"""CTranslate2 model.bin reader: a model converted by ctranslate2 itself maps back exactly onto transformers."""

import struct

import numpy as np
import pytest

from edgemm.export.ct2 import CT2FormatError, read_model_bin

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny random Whisper, converted to CTranslate2 by ctranslate2's own converter (float32)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperTokenizerFast

    from tests.conftest import tiny_whisper_folder

    root = tmp_path_factory.mktemp("ct2")
    folder = tiny_whisper_folder(root)
    WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    out = root / "ct2"
    ctranslate2.converters.TransformersConverter(str(folder), copy_files=["tokenizer.json"]).convert(
        str(out), quantization="float32"
    )
    return folder, out


def test_ct2_maps_onto_transformers_exactly(converted):
    from transformers import WhisperForConditionalGeneration

    from edgemm.export.whisper_source import load_whisper

    folder, ct2_dir = converted
    original = WhisperForConditionalGeneration.from_pretrained(folder).state_dict()
    loaded = load_whisper(str(ct2_dir)).model.state_dict()  # raises on any missing/unexpected key
    assert set(loaded) == set(original)
    for name, value in original.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


def test_packaged_tiny_en_dims():
    from edgemm.export.whisper_source import load_whisper

    config = load_whisper("packaged:whisper-tiny.en").model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size) == (384, 4, 4, 51864)


def test_truncated_model_bin_is_a_clear_error(converted, tmp_path):
    data = (converted[1] / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model_bin(tmp_path / "model.bin")


def test_unknown_version_is_a_clear_error(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 99) + b"\0" * 8)
    with pytest.raises(CT2FormatError, match="version 99"):
        read_model_bin(tmp_path / "model.bin")


def test_split_parts_read_as_one(converted, tmp_path):
    data = (converted[1] / "model.bin").read_bytes()
    (tmp_path / "model.bin.part1").write_bytes(data[:1000])
    (tmp_path / "model.bin.part2").write_bytes(data[1000:])
    _, whole = read_model_bin(converted[1] / "model.bin")
    _, parts = read_model_bin(tmp_path / "model.bin.part1", tmp_path / "model.bin.part2")
    assert whole.keys() == parts.keys()
    assert all(np.array_equal(whole[k], parts[k]) for k in whole)
