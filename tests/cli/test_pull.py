"""`edgemm pull` against a local stand-in for the Hugging Face Hub (tests/hub_double.py, through ``HF_ENDPOINT``):
a bundle arrives verified; a download cut off is resumed (in the same pull, or the next one); an altered file, a
missing repository, an unreachable Hub and an unknown name each stop in one line that names the other ways, with
nothing installed. Bundle names work wherever a bundle folder does, and a missing bundle says how to get it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgemm.runtime import hub
from edgemm.runtime.bundle import MANIFEST, file_entry, open_bundle, sha256_of
from edgemm.runtime.errors import BundleError
from tests.harness import edgemm
from tests.hub_double import HubDouble

REPO = "edgemm/mobilenetv2-imagenet-int8"
BIG = "padding.bin"


@pytest.fixture(scope="module")
def bundle(vision_bundle, tmp_path_factory) -> Path:
    """The vision bundle with a 24 MB file more: past huggingface_hub's 10 MB download blocks, so that a download
    cut off halfway has kept a part to resume from."""
    folder = tmp_path_factory.mktemp("hub") / vision_bundle.name
    shutil.copytree(vision_bundle, folder)
    (folder / BIG).write_bytes(np.random.default_rng(0).bytes(24 << 20))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][BIG] = file_entry(folder / BIG)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def hub_double(bundle, monkeypatch):
    with HubDouble({REPO: bundle}) as double:
        monkeypatch.setenv("HF_ENDPOINT", double.url)
        yield double


def _cli(*args, models: Path, endpoint: str):
    env = {**os.environ, "EDGEMM_MODELS": str(models), "HF_ENDPOINT": endpoint}
    return edgemm(*args, env=env)


def _same(folder: Path, source: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in source.iterdir()) and all(
        sha256_of(p) == sha256_of(source / p.name) for p in folder.iterdir()
    )


def test_pull_installs_a_verified_bundle_and_then_it_is_up_to_date(hub_double, bundle, tmp_path):
    out = _cli("pull", bundle.name, models=tmp_path, endpoint=hub_double.url)
    assert out.returncode == 0, out.stderr
    assert _same(tmp_path / bundle.name, bundle)
    assert not any((tmp_path / ".incoming").iterdir())  # nothing half-done left behind
    # every file came from the one commit the manifest was read at
    commit = HubDouble.commit(REPO)
    gets = [path for method, path, _ in hub_double.requests if method == "GET"]
    assert gets and all(f"/resolve/{commit}/" in path for path in gets)
    hub_double.requests.clear()
    again = _cli("pull", bundle.name, models=tmp_path, endpoint=hub_double.url)
    assert again.returncode == 0 and "up to date" in again.stderr
    assert [path for method, path, _ in hub_double.requests if method == "GET"] == [gets[0]]  # the manifest only


def _resumed_from(ranges: list[str]) -> list[int]:
    return [int(r.split("=")[1].split("-")[0]) for r in ranges]


def test_a_download_cut_off_is_resumed_where_it_stopped(hub_double, bundle, tmp_path):
    hub_double.cut[(REPO, BIG)] = 1
    folder = hub.pull(bundle.name, models=tmp_path)
    assert _same(folder, bundle)
    starts = _resumed_from(hub_double.ranges(BIG))
    assert len(starts) == 1 and 0 < starts[0] <= (bundle / BIG).stat().st_size // 2


def test_a_pull_that_gives_up_is_resumed_by_the_next(hub_double, bundle, tmp_path):
    hub_double.cut[(REPO, BIG)] = hub.RETRIES + 1  # every try of this pull is cut off
    with pytest.raises(BundleError, match=f"the download of {BIG} from {REPO}"):
        hub.pull(bundle.name, models=tmp_path)
    assert not (tmp_path / bundle.name).exists()
    hub_double.requests.clear()
    folder = hub.pull(bundle.name, models=tmp_path)  # the connection is fine again
    assert _same(folder, bundle)
    starts = _resumed_from(hub_double.ranges(BIG))
    assert len(starts) == 1 and starts[0] > 0  # from what the cut-off tries kept


def test_an_altered_file_is_refused_and_nothing_is_installed(hub_double, bundle, tmp_path):
    hub_double.tampered.add((REPO, "labels.json"))
    out = _cli("pull", bundle.name, models=tmp_path, endpoint=hub_double.url)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"edgemm: error: {REPO}: labels.json does not match the sha256 in its manifest (altered or damaged); "
        "nothing was installed"
    )
    assert not (tmp_path / bundle.name).exists()
    hub_double.tampered.clear()  # the next pull fetches that file again, and the bundle arrives
    assert _same(hub.pull(bundle.name, models=tmp_path), bundle)


@pytest.mark.parametrize(
    "args, words",
    [
        (["owner/no-such-bundle"], "no repository owner/no-such-bundle on http://127.0.0.1"),
        (["no-such-preset"], "'no-such-preset' is not a preset (see `edgemm models`)"),
        (["mobilenetv2-imagenet-int8", "--revision", "v9"], "has no such revision"),
        (["a", "b", "--repo", REPO], "give exactly one NAME"),
    ],
)
def test_a_bad_request_is_one_line(hub_double, tmp_path, args, words):
    out = _cli("pull", *args, models=tmp_path, endpoint=hub_double.url)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("edgemm: error:") and words in line, line
    assert not (tmp_path / "mobilenetv2-imagenet-int8").exists()


def test_offline_says_so_at_once_with_the_other_ways(tmp_path):
    out = _cli("pull", "piper-joe-int8", models=tmp_path, endpoint="http://127.0.0.1:9")
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "cannot reach http://127.0.0.1:9 for edgemm/piper-joe-int8" in line
    assert "edgemm bundle install piper-joe-int8.tar" in line and "make setup" in line


def test_the_owner_can_be_swapped_for_a_mirror(monkeypatch):
    monkeypatch.setenv(hub.OWNER_ENV, "mirror")
    assert hub.preset_repo("piper-joe-int8") == "mirror/piper-joe-int8"
    monkeypatch.delenv(hub.OWNER_ENV)
    assert hub.preset_repo("piper-joe-int8") == "edgemm/piper-joe-int8"
    assert hub.preset_repo("no-such-preset") is None


def test_a_preset_name_works_where_a_folder_does(vision_bundle, tmp_path, monkeypatch):
    """`--model NAME` (the name `edgemm models` lists) opens that bundle in the models folder."""
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert open_bundle(vision_bundle.name, "vision").path == vision_bundle
    sf.write(tmp_path / "x.wav", np.zeros(16000, np.float32), 16000)  # readable audio: the bundle is the point
    out = edgemm(
        "transcribe",
        "x.wav",
        "--model",
        "whisper-tiny.en-fp32",
        cwd=tmp_path,
        env={**os.environ, "EDGEMM_MODELS": str(tmp_path)},
    )
    line = out.stderr.strip().splitlines()[-1]
    assert f"no model bundle at {tmp_path / 'whisper-tiny.en-fp32'}" in line, line
    for way in ("edgemm pull whisper-tiny.en-fp32", "edgemm bundle install whisper-tiny.en-fp32.tar", "export"):
        assert way in line, line
