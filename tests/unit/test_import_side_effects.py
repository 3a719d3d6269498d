"""Importing openbits starts nothing and reads nothing of the process: no thread, no
executor, no umask, no proxies (resources and the daemon's environment belong to the
composition root, which opens and reads them)."""

from __future__ import annotations

import json
import os
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


SIDE_EFFECTS = """
import importlib, json, os, pkgutil, urllib.request
calls = []
umask, getproxies = os.umask, urllib.request.getproxies_environment
os.umask = lambda mask: calls.append("os.umask") or umask(mask)
urllib.request.getproxies_environment = lambda: calls.append("getproxies_environment") or getproxies()
import openbits
for m in pkgutil.walk_packages(openbits.__path__, "openbits."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
os.umask, urllib.request.getproxies_environment = umask, getproxies
print(json.dumps(calls), flush=True)
# what the daemon builds at start-up sees the environment of then, not of the imports
os.environ["http_proxy"] = "http://later.example:3128"
umask(0o077)
from openbits.transfer import files, http
proxy = http.env_proxy_for("http://example.com/f", http.env_proxies())
print(json.dumps([proxy, files.published_mode()]))
"""


def test_importing_every_module_reads_no_umask_or_proxies() -> None:
    """The umask (which only ``os.umask`` can read, by changing it for every thread) and the
    proxies of the environment are read by the daemon at start-up, not at import."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    run = subprocess.run([sys.executable, "-c", SIDE_EFFECTS], capture_output=True, text=True, env=env)
    calls, _, rest = run.stdout.partition("\n")
    assert json.loads(calls) == [], "nothing is read at import"
    assert run.returncode == 0, run.stderr
    proxy, mode = json.loads(rest)
    assert proxy == "http://later.example:3128"
    assert mode == 0o600
