"""PAC scripts evaluated out of the daemon: :class:`PacEvaluator` keeps one worker process
(``pypac``'s ``PACFile`` on dukpy's embedded JavaScript engine) and asks it
``FindProxyForURL(url, host)`` with a time limit.

Why a process, not a thread: dukpy holds the GIL while a script runs, and its engine cannot
be interrupted from Python, so a runaway script in a thread would stop the whole daemon.  The
worker is killed when an answer is late and started again on the next question; a script
that never returns costs one time limit per question, nothing more.

The worker dies with the daemon (PR_SET_PDEATHSIG), and lives for at most ``CPU_S`` seconds
of CPU (then the next question starts another).  The sandbox: the worker runs isolated
(``python -I``: no environment, no user site), with an
empty environment, in ``/``, with no file writes (RLIMIT_FSIZE 0) and bounded memory, and
never as root: a root daemon starts it as root (so it can load the daemon's Python and its
modules wherever they are installed, a venv under /root too, as the owners' helpers do) and
it drops to ``nobody`` for good (groups, gid, uid; root checked gone) before it says it is
ready and reads a script, which may come from the network (WPAD).  A worker that could not
drop never answers: the evaluator refuses (PacFailed, logged once) and the routes go
direct.  The interpreter it gives the script has no ``require`` (dukpy's module loader reads
files) and an empty ``process.env``.  What a PAC script may call
is the PAC API pypac provides; ``dnsResolve``/``isResolvable``/``myIpAddress`` resolve names
through the system resolver, as in every browser (bounded by the same time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys

#: the worker's code (it imports nothing of openbits)
WORKER = r"""
import ctypes, json, os, resource, signal, sys
def die_with_the_daemon():  # killed with the daemon, even in the middle of a runaway script
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != @PARENT@:
        sys.exit(0)
die_with_the_daemon()
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_AS, (@MEMORY@, @MEMORY@))
resource.setrlimit(resource.RLIMIT_CPU, (@CPU@, @CPU@ + 5))
import dukpy
from dukpy.evaljs import _PROCESS_RUNTIME, JSInterpreter

shims = {}  # dukpy's runtime files, read as root (before the drop) and kept

class Sandboxed(JSInterpreter):
    def _eval_runtime_shim(self, path, **kwargs):
        if path not in shims:
            with open(path, encoding="utf-8") as runtime:
                shims[path] = runtime.read()
        self.evaljs(shims[path], **kwargs)
    def _init_process(self):
        self._eval_runtime_shim(_PROCESS_RUNTIME, environ={})
    def _init_require(self):
        pass  # no module loader: it reads files

dukpy.JSInterpreter = Sandboxed  # (what pypac's PACFile builds)
from pypac.parser import PACFile
PACFile("function FindProxyForURL(u, h) { return 'DIRECT'; }")  # (what it reads, read now)
if @DROP@:  # never evaluate a script as root: become nobody for good first
    os.setgroups([])
    os.setresgid(@NOBODY@, @NOBODY@, @NOBODY@)
    os.setresuid(@NOBODY@, @NOBODY@, @NOBODY@)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        sys.exit("the PAC worker could take root back")
    die_with_the_daemon()  # (the kernel clears the parent-death signal when the uid changes)
if os.geteuid() == 0:
    sys.exit("the PAC worker would run as root")
scripts = {}
out = sys.stdout
out.write(json.dumps({"ready": os.geteuid()}) + "\n")
out.flush()
for line in sys.stdin:
    ask = json.loads(line)
    try:
        pac = scripts.get(ask["sha"])
        if pac is None:
            if len(scripts) >= 4:
                scripts.clear()
            pac = scripts[ask["sha"]] = PACFile(ask["script"])
        answer = {"ok": str(pac.find_proxy_for_url(ask["url"], ask["host"]) or "")}
    except Exception as e:
        answer = {"error": f"{type(e).__name__}: {e}"[:300]}
    out.write(json.dumps(answer) + "\n")
    out.flush()
"""

#: the worker's address space
MEMORY_BYTES = 512 * 1024 * 1024
#: the longest answer line read back
ANSWER_MAX_BYTES = 64 * 1024
#: CPU seconds a worker may use in its life (then it is replaced: a bound on a worker the
#: daemon could not kill)
CPU_S = 120
#: the uid and gid the worker of a root daemon becomes
NOBODY = 65534

log = logging.getLogger("openbits.transfer.pac")


class PacFailed(Exception):
    """The script did not answer (an error, a time-out, a crashed worker)."""


class PacEvaluator:
    """One worker process, started on first use, asked one question at a time (owned by the
    daemon, which ``close``-s it)."""

    def __init__(self, time_limit_s: float = 5.0) -> None:
        self.time_limit_s = time_limit_s
        self._proc: asyncio.subprocess.Process | None = None
        self._loaded: set[str] = set()  # the scripts the running worker holds
        self._lock = asyncio.Lock()
        self.started = 0  # workers started (a killed one is replaced)
        self._warned = False  # (that no worker could start: logged once)

    async def find(self, script: str, url: str, host: str) -> str:
        """``FindProxyForURL(url, host)`` of ``script``; PacFailed when it fails or runs over
        the time limit (the worker is then killed).  A question given up half way (its task
        cancelled: Suspend, Cancel, Complete) kills the worker too: its answer, or its
        "ready" line, would otherwise be read as the next question's."""
        sha = hashlib.sha256(script.encode()).hexdigest()
        async with self._lock:
            try:
                async with asyncio.timeout(self.time_limit_s):
                    line = await self._ask(sha, script, url, host)
            except TimeoutError:
                await self._kill()
                raise PacFailed(f"the PAC script did not answer within {self.time_limit_s:g} s") from None
            except (OSError, ValueError) as e:
                await self._kill()
                raise PacFailed(f"the PAC worker failed: {e}") from e
            except BaseException:
                await asyncio.shield(self._kill())  # (``_proc`` is let go at once, even if cut short)
                raise
            return await self._answer(line, sha)

    async def _ask(self, sha: str, script: str, url: str, host: str) -> bytes:
        proc = await self._worker()
        assert proc.stdin is not None and proc.stdout is not None
        ask = {"sha": sha, "script": None if sha in self._loaded else script, "url": url, "host": host}
        proc.stdin.write(json.dumps(ask).encode() + b"\n")
        await proc.stdin.drain()
        self._loaded.add(sha)
        return await proc.stdout.readline()

    async def _answer(self, line: bytes, sha: str) -> str:
        """The route list of the worker's answer ``line`` (under the lock: a worker killed
        here is the one that answered)."""
        if not line:
            await self._kill()
            raise PacFailed("the PAC worker ended")
        try:
            answer = json.loads(line)
            if "error" in answer:
                self._loaded.discard(sha)
                raise PacFailed(f"the PAC script failed: {answer['error']}")
            return str(answer["ok"])
        except (ValueError, KeyError, TypeError):
            await self._kill()
            raise PacFailed("the PAC worker answered nonsense") from None

    async def _worker(self) -> asyncio.subprocess.Process:
        """The running worker, or a new one once it said it is ready (unprivileged)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            return proc
        self._loaded.clear()
        proc = self._proc = await _spawn()
        self.started += 1
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        try:
            ready = json.loads(line)["ready"] if line else None
        except (ValueError, KeyError, TypeError):
            ready = None
        if not isinstance(ready, int) or ready == 0:
            await self._kill()
            if not self._warned:
                self._warned = True
                log.warning("the PAC worker could not start without root's rights; PAC answers DIRECT")
            raise PacFailed("the PAC worker could not start unprivileged")
        return proc

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._loaded.clear()
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def close(self) -> None:
        await self._kill()


async def _spawn() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _worker_source(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={},
        cwd="/",
        limit=ANSWER_MAX_BYTES,
        start_new_session=True,
    )


def _worker_source() -> str:
    return (
        WORKER.replace("@MEMORY@", str(MEMORY_BYTES))
        .replace("@PARENT@", str(os.getpid()))
        .replace("@CPU@", str(CPU_S))
        .replace("@DROP@", str(os.geteuid() == 0))
        .replace("@NOBODY@", str(NOBODY))
    )
