"""``edgemm doctor``: what a user needs to report a problem, and what is missing with the command that fixes it.

It reads the machine (CPU, its instruction sets, cores, memory), onnxruntime (version, providers), the extras
installed, every preset's bundle (present, size, every file's sha256 checked, measured fidelity) and the audio and
video devices found. Nothing here raises: each part that cannot be read says so in its own line.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgemm.runtime.limits import available_memory, total_memory
from edgemm.runtime.packages import installed

# The instruction sets that decide onnxruntime's and llama.cpp's kernels, as /proc/cpuinfo names them.
X86_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "fphp", "bf16")
# Extras: name -> (a module it brings, what it is for).
EXTRAS = {
    "device": ("sounddevice", "microphone and speaker"),
    "camera": ("cv2", "camera"),
    "ocr": ("rapidocr_onnxruntime", "text in images"),
    "tts": ("piper", "spoken answers"),
    "serve": ("uvicorn", "edgemm serve"),
    "export": ("torch", "edgemm export"),
    "bench": ("faster_whisper", "edgemm bench peers"),
}


@dataclass
class Finding:
    section: str  # "system", "onnxruntime", "extras", "bundles", "devices"
    name: str
    value: str
    ok: bool = True
    fix: str | None = None  # the command that fixes it, when not ok


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, section: str, name: str, value: str, ok: bool = True, fix: str | None = None) -> None:
        self.findings.append(Finding(section, name, value, ok, fix))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def text(self) -> str:
        lines, section = [], None
        for f in self.findings:
            if f.section != section:
                section = f.section
                lines.append(f"{section}:")
            lines.append(f"  {'  ' if f.ok else '! '}{f.name}: {f.value}")
        problems = self.problems
        lines.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}" + (":" if problems else ""))
        lines += [f"  {f.name}: {f.fix}" for f in problems if f.fix]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"findings": [vars(f) for f in self.findings], "problems": len(self.problems)}


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _memory_mb() -> tuple[int | None, int | None]:
    """Total and available memory (MB) from /proc/meminfo."""
    total, available = total_memory(), available_memory()
    if total is None or available is None:
        return None, None
    return total >> 20, available >> 20


def check_system(report: Report) -> None:
    info = _cpuinfo()
    report.add("system", "platform", f"{platform.system()} {platform.machine()}, Python {sys.version.split()[0]}")
    model = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or "unknown"
    report.add("system", "cpu", f"{model}, {os.cpu_count()} logical cores")
    flags = set((info.get("flags") or info.get("Features") or "").split())
    wanted = ARM_FEATURES if platform.machine().lower() in ("aarch64", "arm64") else X86_FEATURES
    if flags:
        have = [f for f in wanted if f in flags]
        report.add("system", "instruction sets", ", ".join(have) or "none of " + ", ".join(wanted))
    total, available = _memory_mb()
    if total is not None:
        report.add("system", "memory", f"{total} MB, {available} MB available")
    from edgemm.runtime.errors import OptionsError
    from edgemm.runtime.profiles import PROFILE_ENV, active_profile, guess

    try:
        profile = active_profile()
        chosen = "set" if os.environ.get(PROFILE_ENV, "auto") != "auto" else "chosen for this machine"
        report.add("system", "profile", f"{profile.name} ({chosen}): {profile.about}")
    except OptionsError as e:
        report.add("system", "profile", str(e), False, f"unset {PROFILE_ENV} (this machine's guess: {guess()})")


def check_onnxruntime(report: Report) -> None:
    try:
        import onnxruntime as ort
    except ImportError as e:
        report.add(
            "onnxruntime", "onnxruntime", f"cannot be imported ({e})", False, "pip install --force-reinstall edgemm"
        )
        return
    report.add("onnxruntime", "version", ort.__version__)
    report.add("onnxruntime", "providers", ", ".join(ort.get_available_providers()))
    from edgemm.runtime.sessions import default_threads

    report.add("onnxruntime", "threads", f"{default_threads()} by default (--threads to change)")


def check_extras(report: Report) -> None:
    for extra, (module, purpose) in EXTRAS.items():
        if installed(module):
            report.add("extras", extra, f"installed ({purpose})")
        else:
            # Optional extras: a missing one is reported with its command, and is only a problem if wanted.
            report.add("extras", extra, f"not installed ({purpose}): pip install 'edgemm[{extra}]'")


def get_command(name: str, kind: str) -> str:
    """How this install gets bundle ``name``: built with the export extra (torch), else downloaded or copied."""
    if installed("torch"):
        from edgemm.models import presets

        return presets()[kind]["presets"].get(name, {}).get("build") or f"edgemm export {kind} --preset {name}"
    return f"edgemm pull {name}  (offline: `edgemm bundle install {name}.tar`, packed on a machine that has it)"


def check_bundles(report: Report, folder: Path | None = None) -> None:
    from edgemm.models import catalogue
    from edgemm.runtime.bundle import models_dir, open_bundle
    from edgemm.runtime.errors import EdgemmError

    folder = models_dir() if folder is None else Path(folder)
    report.add("bundles", "folder", str(folder))
    for row in catalogue(folder):
        name, kind = row["name"], row["kind"]
        build = get_command(name, kind)
        if not row["built"] and not os.path.lexists(folder / name):
            if row["default"]:
                report.add("bundles", name, f"missing (the default {kind} bundle)", False, build)
            continue
        try:  # a folder whose manifest cannot be read is damaged too: open_bundle says why
            open_bundle(folder / name, kind, verify=True)  # every file's size and sha256
        except EdgemmError as e:
            report.add("bundles", name, f"damaged: {e}", False, f"{build}  (rebuilds it)")
            continue
        quality = f", {row['quality']}" if row.get("quality") else ""
        report.add("bundles", name, f"ok, {row.get('megabytes', 0):.0f} MB, files verified{quality}")


def check_devices(report: Report) -> None:
    if not installed("sounddevice"):
        report.add("devices", "audio", "not checked: the device extra is missing", fix="pip install 'edgemm[device]'")
    else:
        try:
            import sounddevice as sd

            devices = sd.query_devices()
            inputs = [d["name"] for d in devices if d["max_input_channels"] > 0]
            outputs = [d["name"] for d in devices if d["max_output_channels"] > 0]
            report.add("devices", "microphones", ", ".join(inputs) or "none found (file input still works: --mic FILE)")
            report.add("devices", "speakers", ", ".join(outputs) or "none found (answers can go to a WAV file)")
        except Exception as e:  # PortAudio missing or broken: one line
            first = (str(e).splitlines() or [type(e).__name__])[0]
            report.add("devices", "audio", f"cannot be listed ({first})", False, "sudo apt install libportaudio2")
    cameras = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").exists() else []
    report.add("devices", "cameras", ", ".join(cameras) or "none found (photos and video files still work)")


def diagnose(models: Path | None = None) -> Report:
    """Every check, in the order printed."""
    report = Report()
    for check in (check_system, check_onnxruntime, check_extras):
        check(report)
    check_bundles(report, models)
    check_devices(report)
    return report
