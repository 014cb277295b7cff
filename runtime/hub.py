"""``edgemm pull``: prebuilt bundles from the Hugging Face Hub, for a machine without torch.

A bundle's repository holds the bundle folder as it is (``manifest.json`` and the files it lists). Each preset names
its repository (models/presets.json ``repo``; ``$EDGEMM_HUB_OWNER`` swaps the owner for a mirror, ``--repo`` names
another). The manifest is read first, at one commit that every file then comes from; each file is downloaded by
``huggingface_hub`` (progress bar; an interrupted download resumes where it stopped, in this run or the next), then
its size and sha256 are checked against the manifest and the bundle moves into place (runtime/install.py). Nothing
is installed unless every file matches.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgemm.runtime.bundle import FORMAT, MANIFEST, check_file_list, models_dir, open_bundle, read_manifest, sha256_of
from edgemm.runtime.errors import BundleError
from edgemm.runtime.install import check_name, incoming, place, staging

log = logging.getLogger("edgemm")

OWNER_ENV = "EDGEMM_HUB_OWNER"
PROBE_TIMEOUT_S = 10
RETRIES = 3  # a download cut off mid-file is resumed this many times before pull gives up
# The exceptions (by class name, requests' or httpx's) of a connection cut off mid-file: worth resuming.
CUT_OFF = ("ChunkedEncoding", "Protocol", "IncompleteRead", "ReadError", "ReadTimeout", "ConnectionError")


def preset_repo(name: str) -> str | None:
    """The Hub repository of preset ``name`` (None for a name no preset has)."""
    from edgemm.models import presets

    for table in presets().values():
        if name in table["presets"]:
            repo = table["presets"][name].get("repo") or f"edgemm/{name}"
            owner = os.environ.get(OWNER_ENV, "").strip()
            return f"{owner}/{repo.split('/', 1)[1]}" if owner else repo
    return None


def default_names() -> list[str]:
    """The bundles the commands use when none is named, as the machine profile picks them."""
    from edgemm.models import presets
    from edgemm.runtime.profiles import active_profile

    profile = active_profile()
    return [profile.presets.get(kind) or table["default"] for kind, table in presets().items()]


def _endpoint() -> str:
    """``$HF_ENDPOINT`` (a mirror, or a local stand-in), else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def _reachable(repo: str, name: str) -> None:
    """Fail at once, in one line, when the endpoint cannot be reached (huggingface_hub would retry for ~25 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise BundleError(f"HF_HUB_OFFLINE is set: {repo} cannot be downloaded; {_elsewhere(name)}")
    try:
        urllib.request.urlopen(urllib.request.Request(_endpoint(), method="HEAD"), timeout=PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BundleError(f"cannot reach {_endpoint()} for {repo} ({reason}); {_elsewhere(name)}") from None


def _elsewhere(name: str) -> str:
    return (
        f"other ways: `edgemm bundle pack {name}` on a machine that has it, then `edgemm bundle install {name}.tar` "
        "here; or build it with the export extra (`make setup`)"
    )


def _explain(error: Exception, repo: str, file: str, name: str) -> BundleError:
    """One line for what huggingface_hub raised."""
    from huggingface_hub import errors

    where = f"{repo} on {_endpoint()}"
    if isinstance(error, errors.RepositoryNotFoundError):
        why = f"no repository {where} (or it is private)"
    elif isinstance(error, errors.RevisionNotFoundError):
        why = f"{where} has no such revision"
    elif isinstance(error, errors.LocalEntryNotFoundError):  # offline (HF_HUB_OFFLINE) or the host unreachable
        why = f"cannot reach {where} for {file} (offline?)"
    elif isinstance(error, errors.EntryNotFoundError):
        why = f"{where} has no {file}: not an edgemm bundle repository"
    elif "Connect" in type(error).__name__ or "Timeout" in type(error).__name__:
        why = f"cannot reach {where} (offline?)"
    elif isinstance(error, errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", "?")
        why = f"{where} answered HTTP {status} for {file}"
    else:
        why = f"the download of {file} from {where} failed ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    return BundleError(f"{why}; {_elsewhere(name)}")


def _download(repo: str, file: str, revision: str, folder: Path, name: str) -> Path:
    """``file`` of ``repo`` at ``revision`` into ``folder``, resumed up to RETRIES times when cut off."""
    from huggingface_hub import errors, hf_hub_download

    for attempt in range(RETRIES + 1):
        try:
            return Path(hf_hub_download(repo, file, revision=revision, local_dir=folder, endpoint=_endpoint()))
        except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.EntryNotFoundError) as e:
            raise _explain(e, repo, file, name) from None
        except Exception as e:  # noqa: BLE001 (requests' or httpx's: a connection cut mid-file, the part is kept)
            if attempt == RETRIES or not any(word in type(e).__name__ for word in CUT_OFF):
                raise _explain(e, repo, file, name) from None
            log.warning("the download of %s was cut off (%s): resuming", file, type(e).__name__)
            time.sleep(1)
    raise AssertionError("unreachable")


def _commit(repo: str, revision: str, name: str) -> str:
    """The commit ``revision`` of ``repo`` is at now, so that every file comes from the same one."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        url = hf_hub_url(repo, MANIFEST, revision=revision, endpoint=_endpoint())
        commit = get_hf_file_metadata(url).commit_hash
    except Exception as e:  # noqa: BLE001 (an HTTP status, or the host unreachable: one line either way)
        raise _explain(e, repo, MANIFEST, name) from None
    return commit or revision


def _verified(folder: Path, file: str, entry: dict, repo: str) -> None:
    """Refuse (and delete, so that the next pull fetches it again) a downloaded file that is not the manifest's."""
    path = folder / file
    if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
        path.unlink()
        raise BundleError(
            f"{repo}: {file} does not match the sha256 in its manifest (altered or damaged); nothing was installed"
        )


def _installed(target: Path, manifest_sha256: str, kind: str) -> bool:
    """True when ``target`` already holds this very bundle, intact."""
    try:
        if sha256_of(target / MANIFEST) != manifest_sha256:
            return False
        open_bundle(target, kind, verify=True)
    except (OSError, BundleError):
        return False
    return True


def pull(target: str, repo: str | None = None, revision: str = "main", models: Path | None = None) -> Path:
    """Download bundle ``target`` (a preset name, or a repository id ``owner/name``) into ``models`` and return its
    folder. ``repo`` overrides the preset's repository."""
    name = None if "/" in target else check_name(target)
    repo = repo or (target if name is None else preset_repo(name))
    if repo is None:
        raise BundleError(f"{target!r} is not a preset (see `edgemm models`); name its repository with --repo")
    shown = name or repo.rsplit("/", 1)[-1]
    _reachable(repo, shown)
    commit = _commit(repo, revision, shown)
    # One folder per repository, kept between runs: what a cut-off pull downloaded is resumed, not fetched again.
    folder = incoming(models) / f"pull-{repo.replace('/', '--')}"
    _download(repo, MANIFEST, commit, folder, shown)
    manifest = read_manifest(folder)
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{repo}: its {MANIFEST} is not an {FORMAT} manifest")
    name = name or check_name(manifest.get("name"))
    target_dir = (models_dir() if models is None else Path(models)) / name
    if _installed(target_dir, sha256_of(folder / MANIFEST), str(manifest.get("kind"))):
        log.info("%s is up to date (%s)", name, target_dir)
        return target_dir
    for file, entry in check_file_list(folder, manifest).items():  # plain file names only
        _download(repo, file, commit, folder, name)
        _verified(folder, file, entry, repo)
    staged = staging(name, models)
    for file in [MANIFEST, *manifest["files"]]:
        os.replace(folder / file, staged / file)
    shutil.rmtree(folder, ignore_errors=True)
    return place(staged, name, models, verify=False)  # every file's sha256 was checked above
