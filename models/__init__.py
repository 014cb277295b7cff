"""Model presets (which source, which quantization, for which target). Weights are never kept here:
bundles are built into ``$EDGEMM_MODELS`` by ``edgemm export``."""

import json
from importlib import resources
from pathlib import Path

REPORTS = "reports"  # beside the bundles: what `edgemm eval` measured, one JSON file per bundle


def presets() -> dict:
    return json.loads(resources.files(__name__).joinpath("presets.json").read_text())


def _quality(kind: str, quant: str, fidelity: dict) -> str:
    """One line from a bundle's measured fidelity."""
    if kind == "llm" and "perplexity_fp32" in fidelity:
        line = f"perplexity {fidelity.get(f'perplexity_{quant}', fidelity['perplexity_fp32'])}"
        if f"{quant}_perplexity_increase" in fidelity:
            agreement = fidelity[f"{quant}_vs_fp32"]["token_agreement"]
            line += f" ({fidelity[f'{quant}_perplexity_increase']:+.1%} vs fp32, token agreement {agreement:.1%})"
        return line
    if kind == "speech" and "wer_fp32" in fidelity:
        return f"WER {fidelity.get(f'wer_{quant}', fidelity['wer_fp32']):.1%} on {fidelity.get('clips', '?')} clips"
    if kind == "voice" and f"round_trip_wer_{quant}" in fidelity:
        return f"round-trip WER {fidelity[f'round_trip_wer_{quant}']:.1%} on {fidelity.get('sentences', '?')} sentences"
    if f"{quant}_vs_fp32" in fidelity and "top1_agreement" in fidelity[f"{quant}_vs_fp32"]:
        return f"top-1 agreement with fp32 {fidelity[f'{quant}_vs_fp32']['top1_agreement']}"
    return ""


def record_eval(folder: Path, bundle: Path, summary: dict) -> None:
    """Keep ``edgemm eval``'s result for ``bundle`` under ``folder``/reports, tied to its manifest's sha256 (a
    rebuilt bundle's old result is then ignored)."""
    from edgemm.runtime.bundle import sha256_of

    out = Path(folder) / REPORTS / f"{bundle.name}.eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"manifest_sha256": sha256_of(bundle / "manifest.json"), **summary}))
    tmp.replace(out)


def _speed(folder: Path, name: str) -> str | None:
    """'TTFT 262 ms, 19.7 tok/s, 267 MB RSS, eval 14/32' from the bundle's recorded eval; None when there is none,
    or only one of an earlier build."""
    from edgemm.runtime.bundle import sha256_of

    try:
        r = json.loads((Path(folder) / REPORTS / f"{name}.eval.json").read_text())
        if r["manifest_sha256"] != sha256_of(Path(folder) / name / "manifest.json"):
            return None
        passed, total = r["overall"]
        return (
            f"TTFT {r['ttft_ms']:.0f} ms, {r['decode_tok_s']:.1f} tok/s, {r['peak_rss_llm_mb']:.0f} MB RSS, "
            f"eval {passed}/{total}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _listed_bytes(manifest: dict) -> int:
    """The bytes of the files a manifest lists, its entries that are not sizes left out."""
    files = manifest.get("files")
    entries = files.values() if isinstance(files, dict) else ()
    sizes = (e.get("bytes") for e in entries if isinstance(e, dict))
    return sum(n for n in sizes if type(n) is int and 0 <= n < 1 << 50)


def catalogue(folder=None) -> list[dict]:
    """Every preset with what its built bundle (if any) in ``folder`` (default: $EDGEMM_MODELS) measured: size on
    disk and quality from its manifest; for an llm bundle, speed from its last ``edgemm eval`` (None: not measured)."""
    from edgemm.runtime.bundle import models_dir, read_manifest
    from edgemm.runtime.errors import BundleError
    from edgemm.runtime.profiles import active_profile

    folder = models_dir() if folder is None else folder
    profile = active_profile()  # its presets stand in for the defaults
    rows = []
    for kind, table in presets().items():
        default = profile.presets.get(kind) or table["default"]
        for name, preset in table["presets"].items():
            row = {"kind": kind, "name": name, "default": name == default, "built": False, **preset}
            try:
                body = read_manifest(folder / name)  # bounded: a hostile manifest is refused, not read
            except BundleError:
                rows.append(row)
                continue
            row["built"] = True
            row["megabytes"] = round(_listed_bytes(body) / 1e6, 1)
            fidelity = body.get("fidelity")
            try:
                row["quality"] = _quality(kind, preset["quant"], fidelity if isinstance(fidelity, dict) else {})
            except (TypeError, ValueError, KeyError, AttributeError):  # a hand-edited or hostile manifest
                row["quality"] = "fidelity unreadable (edgemm doctor checks the bundle)"
            if kind == "llm":  # what `edgemm eval` measures
                row["speed"] = _speed(folder, name)
            rows.append(row)
    return rows
