"""The one export driver: every component (speech, llm, vision, vlm) declares its steps; this runs them.

A component is a list of named step functions sharing one :class:`ExportJob` (source, quantization, the scratch
folder, the manifest being built). The driver runs them in order inside :func:`staging` (nothing replaces ``out``
unless every step succeeds), logs one line per step (what, how long, the step's numbers), deletes the fp32
reference folder, writes ``manifest.json`` once, checks the written bundle with the runtime's own
:func:`open_bundle` and only then moves it to ``out``; it returns the manifest::

    load checkpoint                   2.0 s  packaged:whisper-tiny.en: 37.8 M parameters
    export fp32 graphs                4.8 s  encoder.onnx, decoder.onnx
    check parity with PyTorch         8.2 s  max logit diff 8.39e-05, 27 greedy tokens equal
    quantize to int8                 12.4 s  encoder 37.6 -> 13.0 MB, decoder 113.6 -> 29.4 MB
    measure WER                      17.5 s  WER fp32 0.0777, int8 0.1359 on 11 clips

Steps that run the runtime on the bundle being built (parity, WER, perplexity) take ``job.bundle()``: the manifest
file is written once, at the end. Torch-free: the steps import what they need.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgemm.export.bundle import staging, write_manifest
from edgemm.export.errors import ExportError
from edgemm.export.quiet import quiet_libraries
from edgemm.runtime.bundle import FORMAT, Bundle, open_bundle

log = logging.getLogger(__name__)

REFERENCE = "fp32"  # the folder inside the scratch folder holding the fp32 graphs of a quantized export


@dataclass
class ExportJob:
    """What the steps of one export share."""

    kind: str  # the bundle kind: speech, llm, vision or vlm
    source: str
    quant: str  # fp32, int8 or int4
    out: Path  # the bundle folder, replaced only when every step succeeded
    measure: bool  # run the fidelity measurements (WER, perplexity, ...): off with --no-fidelity
    work: Path  # the scratch folder that becomes ``out``
    body: dict = field(default_factory=dict)  # the manifest being built (write_manifest adds format, kind, files)
    loaded: object = None  # what the load step read (each component's own type), for the later steps

    @property
    def fp32(self) -> Path:
        """Where the fp32 graphs go: the bundle itself for an fp32 export, else a reference folder inside it that
        the driver deletes before writing the manifest."""
        return self.work if self.quant == "fp32" else self.work / REFERENCE

    @property
    def fidelity(self) -> dict:
        """The manifest's fidelity section; created where it is first recorded, so it keeps that place."""
        return self.body.setdefault("fidelity", {})

    def bundle(self, fp32: bool = False) -> Bundle:
        """The bundle being built as the runtime classes take it (``Transcriber(bundle)``, ...): no manifest file
        needed. ``fp32=True``: the same bundle with the fp32 reference graphs (parity, fp32 fidelity)."""
        manifest = {"format": FORMAT, "kind": self.kind, **self.body}
        if fp32 and self.fp32 != self.work:
            manifest["graphs"] = {role: f"{REFERENCE}/{name}" for role, name in self.body["graphs"].items()}
        return Bundle(self.work, manifest)


@dataclass(frozen=True)
class Step:
    name: str  # what its progress line says, e.g. "quantize to int8"
    run: Callable[[ExportJob], str | None]  # does the work; returns the numbers for its line, if any
    quantized_only: bool = False  # skipped for fp32 bundles
    measurement: bool = False  # a fidelity measurement: skipped with --no-fidelity


@dataclass(frozen=True)
class Component:
    kind: str  # the bundle kind, checked by open_bundle
    quants: tuple[str, ...]
    steps: tuple[Step, ...]


def build(component: Component, source: str, quant: str, out: Path, measure: bool = True) -> dict:
    """Run ``component``'s steps into a scratch folder; replace ``out`` with it when all succeeded."""
    if quant not in component.quants:
        raise ExportError(f"{component.kind} bundles are {' or '.join(component.quants)}, not {quant!r}")
    out = Path(out)
    try:
        return _build(component, source, quant, out, measure)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(out.parent).free >> 20 if out.parent.exists() else 0
        raise ExportError(
            f"the disk holding {out.parent} is full ({free} MB free): the export stopped and left nothing behind"
            f"{' (the existing bundle is unchanged)' if out.exists() else ''}; free some space and run it again"
        ) from None


def _build(component: Component, source: str, quant: str, out: Path, measure: bool) -> dict:
    with quiet_libraries(), staging(out) as work:
        job = ExportJob(component.kind, source, quant, out, measure, work, body={"name": out.name, "source": source})
        job.fp32.mkdir(exist_ok=True)
        for step in component.steps:
            if (step.quantized_only and quant == "fp32") or (step.measurement and not measure):
                continue
            start = time.perf_counter()
            numbers = step.run(job)
            seconds = time.perf_counter() - start
            log.info("%-30s %6.1f s%s", step.name, seconds, f"  {numbers}" if numbers else "")
        if job.fp32 != work:
            shutil.rmtree(job.fp32)
        manifest = write_manifest(work, component.kind, job.body)
        open_bundle(work, component.kind)  # the written bundle verifies before it replaces anything
    return manifest
