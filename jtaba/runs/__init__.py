"""Runs as a library: sample -> invert -> reconstruct a model in memory, chunked, resumable, sharded, reusable.

    from jtaba import runs
    r = runs.run(jtaba.load("default"), runs.RunSettings(n=512, steps=50, reconstruction=False))
    r["latents"]          # (512, C, H, W) memory map; r.identity says what it was computed from

``run`` (``jtaba.runs.run``), its settings (``jtaba.runs.settings``), the chunk store (``jtaba.runs.store``), content
fingerprints (``jtaba.runs.fingerprint``), the reader of finished runs (``jtaba.runs.reader``) and upstream's arrays
as a run (``jtaba.runs.importer``).
"""
from jtaba.runs.importer import import_run
from jtaba.runs.reader import Run, RunDamaged, RunNotFinished, find_run, open_run
from jtaba.runs.run import Workspace, plan, run, with_schedule
from jtaba.runs.settings import RunSettings, StandardOptions
from jtaba.runs.store import RunMismatch

__all__ = ["Run", "RunDamaged", "RunMismatch", "RunNotFinished", "RunSettings", "StandardOptions", "Workspace",
           "find_run", "import_run", "open_run", "plan", "run", "with_schedule"]
