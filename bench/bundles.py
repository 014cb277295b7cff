"""``edgemm bench bundle``: installing a large bundle file, in time and peak memory, beside unpacking it by hand.

The bundle is the default vision bundle plus one file of random bytes (``--megabytes``, default 2000), packed once with ``edgemm bundle pack``. Each run installs it into an empty models
folder with ``edgemm bundle install`` (streamed: checked as it is written, then moved into place), and the peer does
what a user would do by hand: ``tar -xf`` then ``sha256sum`` of every file. Peak RSS is each process's own
(``wait4``). Method and results: docs/BENCHMARKS.md ("Bundle files").
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgemm.bench.commands import BundleOptions

BLOCK = 1 << 20


def measured(argv: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``argv``, and of the children it waited for."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:4]} failed: {proc.stderr.read().decode(errors='replace')[-500:]}")
    return seconds, usage.ru_maxrss / 1024


def big_bundle(folder: Path, megabytes: int) -> Path:
    """The default vision bundle with a ``megabytes`` file of random bytes listed in its manifest."""
    from edgemm.runtime.bundle import MANIFEST, file_entry, open_bundle

    shutil.copytree(open_bundle(None, "vision").path, folder)
    with open(folder / "padding.bin", "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(BLOCK))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["padding.bin"] = file_entry(folder / "padding.bin")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def run_bench_bundle(args: BundleOptions) -> int:
    megabytes = args.megabytes
    edgemm = [sys.executable, "-m", "edgemm.runtime.cli"]
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        root = Path(scratch)
        bundle = big_bundle(root / "big-vision", megabytes)
        archive = root / "big-vision.tar"
        pack = measured([*edgemm, "bundle", "pack", str(bundle), "-o", str(archive)])
        archive_mb = archive.stat().st_size / 1e6
        shutil.rmtree(bundle)
        ours, peer = [], []
        for _ in range(args.runs):
            models = root / "models"
            ours.append(measured(["env", f"EDGEMM_MODELS={models}", *edgemm, "bundle", "install", str(archive)]))
            shutil.rmtree(models)
            out = root / "by-hand"
            out.mkdir()
            seconds, rss = measured(["tar", "-xf", str(archive), "-C", str(out)])
            files = sorted(str(p) for p in out.rglob("*") if p.is_file())
            more, rss_sum = measured(["sha256sum", *files])
            peer.append((seconds + more, max(rss, rss_sum)))
            shutil.rmtree(out)
    report = {
        "archive_mb": round(archive_mb),
        "pack_s": round(pack[0], 2),
        "pack_peak_rss_mb": round(pack[1]),
        "install_s": [round(s, 2) for s, _ in ours],
        "install_median_s": round(statistics.median(s for s, _ in ours), 2),
        "install_peak_rss_mb": round(max(r for _, r in ours)),
        "tar_and_sha256sum_median_s": round(statistics.median(s for s, _ in peer), 2),
        "tar_and_sha256sum_peak_rss_mb": round(max(r for _, r in peer)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"bundle file of {report['archive_mb']} MB: pack {report['pack_s']} s ({report['pack_peak_rss_mb']} MB RSS)")
    print(f"{'':28}{'median s':>10}{'peak RSS MB':>14}")
    print(f"{'edgemm bundle install':28}{report['install_median_s']:>10}{report['install_peak_rss_mb']:>14}")
    peer_s, peer_rss = report["tar_and_sha256sum_median_s"], report["tar_and_sha256sum_peak_rss_mb"]
    print(f"{'tar -xf + sha256sum':28}{peer_s:>10}{peer_rss:>14}")
    return 0
