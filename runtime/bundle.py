"""Model bundles: a folder with ``manifest.json`` listing every file with its size and sha256.

The manifest is the single place where model dimensions, special tokens and preprocessing parameters
live; the runtime reads them from here and never guesses them from a model's name.

A bundle may come from anywhere (a copied folder, a download), so :func:`open_bundle` treats it as untrusted:
every file in the folder must be listed and hashed (onnxruntime opens a graph's external data files itself, so an
unlisted ``decoder.onnx.data`` would otherwise load unchecked), :meth:`Bundle.file` serves only listed files, and
every number the runtime reads from the manifest is type- and range-checked before a loader sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.errors import BundleError

MANIFEST = "manifest.json"
# A manifest is a few KB (the largest, a vlm's, is under 10 KB); past this it is refused unread, so that a manifest
# replaced by a huge file or linked to /dev/zero costs no memory.
MAX_MANIFEST_BYTES = 1 << 20
FORMAT = "edgemm-bundle/1"
SHA256 = re.compile(r"[0-9a-f]{64}")

# The manifest numbers the runtime reads, per bundle kind: section -> {field: (minimum, maximum)}. The maxima are
# far above any model an edge device runs; they keep a hostile manifest from sizing buffers of terabytes.
_LLM_NUMBERS = {
    "model": {
        "vocab_size": (1, 1 << 22),
        "hidden_size": (1, 1 << 16),
        "num_layers": (1, 1024),
        "num_kv_heads": (1, 1024),
        "head_dim": (1, 4096),
        "max_positions": (16, 1 << 24),
    }
}
TOKEN_ID = (0, 1 << 22)
NUMBERS = {
    "llm": _LLM_NUMBERS,
    "vlm": {**_LLM_NUMBERS, "image": {"token_id": TOKEN_ID, "tokens_per_image": (1, 1 << 16)}},
    "speech": {
        "model": {
            "d_model": (1, 1 << 16),
            "decoder_layers": (1, 1024),
            "decoder_attention_heads": (1, 1024),
            "max_source_positions": (1, 1 << 16),
            "max_target_positions": (1, 1 << 16),
        },
        "features": {
            "sample_rate": (1000, 384000),
            "n_fft": (16, 1 << 16),
            "hop_length": (1, 1 << 16),
            "n_mels": (1, 1024),
            "chunk_seconds": (1, 600),
        },
        "tokens": {
            name: TOKEN_ID
            for name in (
                "eot",
                "sot",
                "translate",
                "transcribe",
                "sot_prev",
                "no_speech",
                "no_timestamps",
                "timestamp_begin",
            )
        },
    },
    "vision": {"preprocessing": {"resize_shorter": (1, 8192), "crop": (1, 8192)}, "model": {"classes": (1, 1 << 20)}},
    "voice": {"voice": {"sample_rate": (1000, 384000), "hop_length": (1, 1 << 16)}},
    "wake": {
        "features": {
            "sample_rate": (1000, 384000),
            "chunk_samples": (1, 1 << 16),
            "mel_context_samples": (0, 1 << 16),
            "embedding_window": (1, 1024),
            "embedding_size": (1, 4096),
        }
    },
}
# The files each kind's manifest names (a dotted key is a field of a section): each must name a listed file.
FILE_FIELDS = {
    "llm": ("graphs.embed", "graphs.decoder", "tokenizer", "chat_template"),
    "vlm": ("graphs.embed", "graphs.decoder", "graphs.vision", "tokenizer", "chat_template"),
    "speech": ("graphs.encoder", "graphs.decoder", "tokenizer"),
    "vision": ("graphs.classifier", "labels"),
    "voice": ("voice.acoustic", "voice.vocoder", "voice.config"),
    "wake": ("graphs.melspectrogram", "graphs.embedding"),
}
# A vlm bundle's image processor (manifest image.processor, as export/vlm.py writes it; see check_image_processor).
MAX_IMAGE_SIDE = 4096  # pixels: no image is worked on past this side (Idefics3's processor never resizes past it)
MAX_TILES_PER_SIDE = 8  # Idefics3 tiles along an image's longer side (SmolVLM and Idefics3 use at most 4)
MAX_TOKEN_CHARS = 256  # an image token's text (<image>, <fake_token_around_image>, ...)


def models_dir() -> Path:
    """Where bundles are built and looked up: ``$EDGEMM_MODELS``, else the user's cache folder."""
    if os.environ.get("EDGEMM_MODELS"):
        return Path(os.environ["EDGEMM_MODELS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgemm" / "models"


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    """``value`` for a one-line message, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    # True for a bundle opened with open_bundle: file() serves only the files its manifest lists and hashes. A
    # bundle being built (the exporters) has no file list yet; its files still have to lie inside its folder.
    listed: bool = False

    def graph_files(self) -> list[Path]:
        """Every ONNX graph the manifest names (``graphs`` and a detector's), for the memory check before loading."""
        names = [v for v in self.section("graphs").values() if isinstance(v, str)]
        detector = self.manifest.get("detector")
        if isinstance(detector, dict) and isinstance(detector.get("graph"), str):
            names.append(detector["graph"])
        return [self.file(name) for name in names]

    def file(self, name: str) -> Path:
        """The path of the bundle file ``name``; a name the manifest does not list, or outside the folder, is
        refused."""
        if not isinstance(name, str) or not name:
            raise BundleError(f"bundle {self.path}: the manifest names a file as {name!r}, not a file name")
        files = self.manifest.get("files")
        if self.listed and not (isinstance(files, dict) and name in files):
            raise BundleError(f"bundle {self.path}: {name!r} is not listed with a hash in the manifest's files")
        folder = self.path.resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or path == folder:
            raise BundleError(f"bundle {self.path}: {name!r} lies outside the bundle folder")
        return self.path / name

    def tokenizer(self, name: str):
        """The ``tokenizers`` Tokenizer in bundle file ``name``; an unreadable one is a BundleError."""
        from tokenizers import Tokenizer

        path = self.file(name)
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(f"{path} is not a readable tokenizer ({first})") from None

    def text(self, name: str) -> str:
        """The UTF-8 text of bundle file ``name``."""
        path = self.file(name)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{path} is not readable UTF-8 text ({e})") from None

    def json(self, name: str):
        """The parsed JSON of bundle file ``name``."""
        try:
            return json.loads(self.text(name))
        except RecursionError:
            raise BundleError(f"{self.path / name} is not valid JSON (nested too deep)") from None
        except ValueError as e:  # JSONDecodeError, an integer of too many digits
            raise BundleError(f"{self.path / name} is not valid JSON ({str(e).splitlines()[0][:200]})") from None

    def section(self, name: str) -> dict:
        """The mapping ``manifest[name]``; a dotted name (``image.processor``) reaches into nested mappings."""
        value = self.manifest
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, dict):
            raise BundleError(f"bundle {self.path}: the manifest's {name!r} section is missing or not a mapping")
        return value

    def field(self, section: str, key: str, valid, expected: str):
        """``manifest[section][key]`` when ``valid(value)``; otherwise a BundleError that says what was
        ``expected``."""
        fields = self.section(section)
        value = fields.get(key)
        if key not in fields or not valid(value):
            shown = _shown(value) if key in fields else "missing"
            raise BundleError(f"bundle {self.path}: manifest {section}.{key} is {shown}; expected {expected}")
        return value

    def int_field(self, section: str, key: str, minimum: int = 1, maximum: int = 1 << 31) -> int:
        """The integer ``manifest[section][key]``, checked to lie in ``minimum..maximum``."""
        expected = f"an integer from {minimum} to {maximum}"
        return self.field(section, key, lambda v: _is_int(v) and minimum <= v <= maximum, expected)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]


def read_manifest(folder: Path, hint: str = "") -> dict:
    """The JSON object in ``folder``/manifest.json. It is read only when it is a regular file (a FIFO or a device is
    never opened) of at most MAX_MANIFEST_BYTES; whatever cannot be read or parsed (too deep, an integer of too many
    digits) is a one-line BundleError. ``hint`` follows the message of a missing manifest."""
    path = folder / MANIFEST
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {info.st_size:,} bytes, over the {MAX_MANIFEST_BYTES:,}-byte limit")
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"no model bundle at {folder}: {MANIFEST} is missing{hint}") from None
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:  # it grew after the stat
        raise BundleError(f"{path} is over the {MAX_MANIFEST_BYTES:,}-byte limit")
    try:
        manifest = json.loads(data)
    except RecursionError:
        raise BundleError(f"{path} is not valid JSON (nested too deep)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise BundleError(f"{path} is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is not a JSON object")
    return manifest


def bundle_kind(path: str | Path) -> str | None:
    """The ``kind`` a bundle folder's manifest declares, or None when it has no readable manifest."""
    try:
        return read_manifest(bundle_path(path, "")).get("kind")
    except BundleError:
        return None  # open_bundle reports it properly


def default_bundle(kind: str) -> Path:
    """The folder of the default preset of ``kind``: the machine profile's choice (runtime/profiles.py), else the
    kind's default in models/presets.json."""
    from edgemm.models import presets
    from edgemm.runtime.profiles import active_profile

    return models_dir() / (active_profile().presets.get(kind) or presets()[kind]["default"])


def _check_file_field(bundle: Bundle, dotted: str) -> None:
    section, _, key = dotted.rpartition(".")
    fields = bundle.section(section) if section else bundle.manifest
    name = fields.get(key)
    if not (isinstance(name, str) and name in bundle.manifest["files"]):
        shown = _shown(name) if key in fields else "missing"
        raise BundleError(f"bundle {bundle.path}: manifest {dotted} is {shown}; expected the name of a listed file")


def _is_token_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(i) and TOKEN_ID[0] <= i <= TOKEN_ID[1] for i in value)


def check_numbers(bundle: Bundle) -> None:
    """Every manifest field the runtime of this kind reads: the files it names are listed, its numbers are integers
    in range, its token lists are token ids (BundleError otherwise)."""
    if bundle.kind == "speech":
        for key in ("suppress", "suppress_begin"):
            bundle.field("tokens", key, _is_token_list, "a list of token ids")
        languages = bundle.field("tokens", "languages", lambda v: isinstance(v, dict), "a mapping")
        if not all(isinstance(code, str) and _is_int(i) and i >= 0 for code, i in languages.items()):
            raise BundleError(f"bundle {bundle.path}: manifest tokens.languages must map codes to token ids")
    if bundle.kind == "vision":
        bundle.field("preprocessing", "mean", lambda v: _is_rgb(v, lambda x: -255 <= x <= 255), "3 numbers")
        bundle.field("preprocessing", "std", lambda v: _is_rgb(v, lambda x: 0 < x <= 255), "3 numbers in (0, 255]")
    for section, fields in NUMBERS.get(bundle.kind, {}).items():
        for key, (low, high) in fields.items():
            bundle.int_field(section, key, low, high)
    if bundle.kind in ("llm", "vlm"):
        eos = bundle.section("special_tokens").get("eos_token_ids")
        if not isinstance(eos, list) or not all(_is_int(i) and i >= 0 for i in eos):
            raise BundleError(f"bundle {bundle.path}: manifest special_tokens.eos_token_ids is {eos!r}")
    if bundle.kind == "speech":
        heads = bundle.int_field("model", "decoder_attention_heads")
        if bundle.int_field("model", "d_model") % heads:
            raise BundleError(f"bundle {bundle.path}: manifest model.d_model is not a multiple of the heads")
        if "encoder_lengths" in bundle.section("model"):
            check_encoder_lengths(bundle)
    if bundle.kind == "vlm":
        check_image_processor(bundle)
    if bundle.kind == "voice":
        bundle.field("voice", "latent", lambda v: isinstance(v, str) and v, "the name of the vocoder's input")
    for dotted in FILE_FIELDS.get(bundle.kind, ()):
        _check_file_field(bundle, dotted)
    if bundle.kind == "vision" and bundle.manifest.get("detector") is not None:
        check_detector(bundle)
    if bundle.kind == "speech" and bundle.manifest.get("vad") is not None:
        _check_file_field(bundle, "vad.file")
    if bundle.kind == "wake":
        check_wake_words(bundle)


def check_wake_words(bundle: Bundle) -> None:
    """A wake bundle's words (export/wake.py writes them): each names a listed graph, its window of embeddings and
    a threshold in (0, 1)."""
    words = bundle.section("words")
    if not words:
        raise BundleError(f"bundle {bundle.path}: manifest words is empty")
    for word in words:
        if not (isinstance(word, str) and re.fullmatch(r"[a-z0-9_]{1,64}", word) and isinstance(words[word], dict)):
            raise BundleError(f"bundle {bundle.path}: manifest words.{_shown(word)} is not a word's section")
        _check_file_field(bundle, f"words.{word}.graph")
        bundle.int_field(f"words.{word}", "window", 1, 1024)
        bundle.field(f"words.{word}", "threshold", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
        bundle.field(f"words.{word}", "phrase", lambda v: isinstance(v, str) and 0 < len(v) <= 100, "a phrase")


def check_detector(bundle: Bundle) -> None:
    """The optional object detector of a vision bundle (export/detector.py writes it)."""
    for dotted in ("detector.graph", "detector.labels"):
        _check_file_field(bundle, dotted)
    bundle.int_field("detector", "input_size", 32, 4096)
    bundle.int_field("detector", "reg_max", 1, 64)
    bundle.field(
        "detector",
        "strides",
        lambda v: isinstance(v, list) and v and all(_is_int(s) and 1 <= s <= 256 for s in v),
        "a list of strides",
    )
    bundle.field("detector", "mean", lambda v: _is_rgb(v, lambda x: -255 <= x <= 255), "3 numbers")
    bundle.field("detector", "std", lambda v: _is_rgb(v, lambda x: 0 < x <= 255), "3 numbers in (0, 255]")
    bundle.field("detector", "channel_order", lambda v: v in ("RGB", "BGR"), "'RGB' or 'BGR'")
    bundle.field("detector", "min_score", lambda v: isinstance(v, (int, float)) and 0 < v < 1, "a number in (0, 1)")


def is_encoder_lengths(value, full: int) -> bool:
    """Even mel-frame counts from 2 to ``full``, strictly ascending, the last ``full`` (the whole window)."""
    return (
        isinstance(value, list)
        and all(_is_int(n) and 2 <= n <= full and n % 2 == 0 for n in value)
        and value == sorted(set(value))  # strictly ascending
        and value[-1:] == [full]
    )


def check_encoder_lengths(bundle: Bundle) -> list[int]:
    """A length-adaptive speech bundle's ``model.encoder_lengths``: the mel-frame lengths its encoder was distilled
    to run at (the transcriber pads each window to the smallest that holds it). Even (the encoder's convolutions
    halve them), strictly ascending, and the last is the full window (2 x max_source_positions), so that every
    window has one."""
    full = 2 * bundle.int_field("model", "max_source_positions")
    expected = f"a list of even integers from 2 to {full}, ascending, ending with {full}"
    return bundle.field("model", "encoder_lengths", lambda v: is_encoder_lengths(v, full), expected)


def _is_side(value) -> bool:
    return _is_int(value) and 1 <= value <= MAX_IMAGE_SIDE


def _is_rgb(value, valid) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_number(x) and valid(x) for x in value)


def _is_token_text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_CHARS


def check_image_processor(bundle: Bundle) -> None:
    """A vlm bundle's image fields, as vision/vlm.py uses them: the processor type, Pillow resampling filter,
    rescale factor, RGB mean and std; per type, the sizes (pixels, at most MAX_IMAGE_SIDE) and for Idefics3 at most
    MAX_TILES_PER_SIDE tiles a side; the image tokens' text. A one-line BundleError naming the field otherwise."""
    p = "image.processor"
    kind = bundle.field(p, "type", lambda v: v in ("clip", "idefics3"), "'clip' or 'idefics3'")
    bundle.int_field(p, "resample", 0, 5)  # Pillow's filters: nearest, lanczos, bilinear, bicubic, box, hamming
    bundle.field(p, "rescale", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
    bundle.field(p, "mean", lambda v: _is_rgb(v, lambda x: -255 <= x <= 255), "3 numbers from -255 to 255")
    bundle.field(p, "std", lambda v: _is_rgb(v, lambda x: 0 < x <= 255), "3 numbers in (0, 255]")
    side = f"an integer from 1 to {MAX_IMAGE_SIDE}"
    if kind == "clip":
        bundle.field(p, "resize_shorter", lambda v: v is None or _is_side(v), f"null or {side}")
        crop = "[height, width], each " + side
        bundle.field(p, "crop", lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_side, v)), crop)
    else:
        longest = bundle.field(p, "longest_edge", lambda v: v is None or _is_side(v), f"null or {side}")
        tile = bundle.int_field(p, "tile", 1, MAX_IMAGE_SIDE)
        tiles = -(-(longest or MAX_IMAGE_SIDE) // tile)  # along the longer side, after resizing
        if bundle.field(p, "split", lambda v: isinstance(v, bool), "true or false") and tiles > MAX_TILES_PER_SIDE:
            raise BundleError(
                f"bundle {bundle.path}: manifest {p}.tile is {tile}: {tiles} tiles a side, past {MAX_TILES_PER_SIDE}"
            )
    for key in ("token", "fake_token", "global_token") if kind == "idefics3" else ("token",):
        bundle.field("image", key, _is_token_text, f"a string of 1 to {MAX_TOKEN_CHARS} characters")


def check_file_list(folder: Path, manifest: dict) -> dict:
    """The manifest's ``files`` mapping, each entry a plain file name with an integer size and a sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"bundle {folder}: the manifest has no 'files' mapping (every file needs a hash)")
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name in (".", "..", MANIFEST) or ".." in name:
            raise BundleError(f"bundle {folder}: the manifest lists {name!r}, which is not a plain file name")
        if not (isinstance(entry, dict) and _is_int(entry.get("bytes")) and entry["bytes"] >= 0):
            raise BundleError(f"bundle {folder}: the manifest entry of {name} has no integer 'bytes'")
        if not (isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])):
            raise BundleError(f"bundle {folder}: the manifest entry of {name} has no 64-hex-digit 'sha256'")
    return files


def _check_files(folder: Path, manifest: dict, verify: bool) -> None:
    files = check_file_list(folder, manifest)
    try:
        unlisted = next((i.name for i in folder.iterdir() if i.name != MANIFEST and i.name not in files), None)
    except OSError as e:
        raise BundleError(f"cannot list the files of bundle {folder}: {e.strerror}") from None
    if unlisted:
        raise BundleError(f"bundle {folder}: {unlisted} is not listed in the manifest (refusing unhashed files)")
    for name, entry in files.items():
        try:
            _check_file(folder, name, entry, verify)
        except OSError as e:  # no permission, a name too long for the file system, a read error
            raise BundleError(f"bundle {folder}: cannot read {_shown(name)}: {e.strerror}") from None


def _check_file(folder: Path, name: str, entry: dict, verify: bool) -> None:
    file = folder / name
    try:
        info = file.lstat()
    except FileNotFoundError:
        raise BundleError(f"bundle {folder} is incomplete: {name} is missing") from None
    if not stat.S_ISREG(info.st_mode):  # a symbolic link, a folder, a FIFO, a device
        raise BundleError(f"bundle {folder}: {name} is not a regular file")
    if info.st_size != entry["bytes"]:
        size, expected = info.st_size, _shown(entry["bytes"])
        raise BundleError(f"{file}: size {size} bytes, manifest expects {expected} (truncated or replaced?)")
    if verify:
        actual = sha256_of(file)
        if actual != entry["sha256"]:
            raise BundleError(f"{file}: sha256 {actual} does not match the manifest's {entry['sha256']}")


def bundle_path(path: str | Path | None, kind: str) -> Path:
    """The folder a ``--model``-style value names: None is the default preset's bundle; a bare name that is not a
    folder here but a bundle in the models folder or a preset (``smollm2-135m-instruct-int4``) is that bundle in the
    models folder; anything else is a path."""
    if not path:
        return default_bundle(kind)
    folder = Path(path).expanduser()
    if len(folder.parts) == 1 and not folder.is_absolute() and not os.path.lexists(folder) and _known(folder.name):
        return models_dir() / folder
    return folder


def _known(name: str) -> bool:
    """Whether ``name`` is a bundle in the models folder or a preset's name."""
    from edgemm.models import presets

    in_models = os.path.lexists(models_dir() / name)
    return in_models or any(name in table["presets"] for table in presets().values())


def missing_hint(folder: Path, kind: str) -> str:
    """How to get the bundle that should be at ``folder``: the three ways, when it is a preset's place in the models
    folder; nothing otherwise (a folder the user chose)."""
    from edgemm.models import presets

    name = folder.name
    if folder.parent != models_dir():
        return ""
    preset = presets().get(kind, {}).get("presets", {}).get(name)
    if preset is None:
        return ""
    build = preset.get("build") or f"edgemm export {kind} --preset {name}"
    return (
        f"; get it with `edgemm pull {name}` (online), or `edgemm bundle install {name}.tar` (packed by `edgemm "
        f"bundle pack {name}` on a machine that has it), or build it: `{build}` (export extra; `make setup` builds "
        "every default)"
    )


def open_declared(path: str | Path, verify: bool = True) -> Bundle:
    """The bundle at ``path`` opened as the kind its own manifest declares (packing, installing), checked as
    :func:`open_bundle` checks one."""
    folder = bundle_path(path, "")
    kind = read_manifest(folder).get("kind")
    return open_bundle(folder, kind if isinstance(kind, str) else "?", verify)


def open_bundle(path: str | Path | None, kind: str, verify: bool = True) -> Bundle:
    """Open and check a bundle: manifest present and of the right kind, every file in the folder listed, of the
    right size and hash, and the manifest's numbers in range. ``path`` as :func:`bundle_path` reads it."""
    folder = bundle_path(path, kind)
    manifest = read_manifest(folder, missing_hint(folder, kind))
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise BundleError(
            f"{folder} is not a {kind} bundle (format={_shown(manifest.get('format'))}, "
            f"kind={_shown(manifest.get('kind'))})"
        )
    _check_files(folder, manifest, verify)
    bundle = Bundle(folder, manifest, listed=True)
    check_numbers(bundle)
    return bundle
