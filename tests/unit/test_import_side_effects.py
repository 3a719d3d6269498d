"""Importing openbits starts nothing: no thread, no executor (resources belong to the
composition root, which opens and closes them)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import concurrent.futures, gc, importlib, pkgutil, threading
before = threading.active_count()
import openbits
names = [m.name for m in pkgutil.walk_packages(openbits.__path__, "openbits.")]
names = [n for n in names if not n.endswith("__main__")]  # (that one runs the CLI)
for name in names:
    importlib.import_module(name)
executors = [o for o in gc.get_objects() if isinstance(o, concurrent.futures.Executor)]
print(len(names), threading.active_count() - before, len(executors))
"""


def test_importing_every_module_creates_no_thread_or_executor() -> None:
    # in a fresh interpreter: the test session has imported (and started) things already
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    modules, threads, executors = map(int, out.stdout.split())
    assert modules > 30, "every module of the package was imported"
    assert (threads, executors) == (0, 0)
