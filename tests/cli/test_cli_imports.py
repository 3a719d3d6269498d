"""The `openbits` command line starts light: neither its import nor a call to a daemon on its
Unix socket loads ssl, http.client (and its email package), or aiohttp.

Those cost ~40 ms of every command's start-up (issue 14: `openbits upload` against curl);
ssl is for an https daemon alone, aiohttp for AsyncClient and the daemon. Checked by the
modules a fresh interpreter holds, not by timing (which a shared machine makes noise of).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import Daemon

HEAVY = ("ssl", "http.client", "email", "aiohttp")

#: runs the CLI's entry point with the arguments given; the last one is where it writes, as
#: it exits, which of HEAVY the interpreter has imported
PROBE = f"""
import atexit, json, sys
out = sys.argv.pop()
atexit.register(lambda: open(out, "w").write(json.dumps([m for m in {HEAVY!r} if m in sys.modules])))
sys.argv[0] = "openbits"
from openbits.cli.openbits import main
main()
"""


def heavy_modules(tmp_path: Path, *args: str, socket_path: str | None = None) -> tuple[list[str], str]:
    """The HEAVY modules imported by ``openbits ARGS`` (run to its end), and its stdout."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBITS_")}
    if socket_path is not None:
        env["OPENBITS_SOCKET"] = socket_path
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"openbits {' '.join(args)}: rc={run.returncode}\n{run.stderr}"
    return json.loads(out.read_text()), run.stdout


def test_importing_the_cli_loads_no_heavy_module() -> None:
    script = f"import sys, openbits.cli.openbits; print([m for m in {HEAVY!r} if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_version_loads_no_heavy_module(tmp_path: Path) -> None:
    loaded, stdout = heavy_modules(tmp_path, "--version")
    assert stdout.startswith("openbits ")
    assert loaded == []


def test_calls_over_the_unix_socket_load_no_heavy_module(tmp_path: Path, daemon: Daemon) -> None:
    """A command's whole run against a real daemon: create (a POST with a body), get (a
    GET), cancel (an instance method), each its own process."""
    loaded, stdout = heavy_modules(tmp_path, "create", "light", socket_path=daemon.socket)
    assert loaded == []
    job_id = stdout.strip()
    loaded, stdout = heavy_modules(tmp_path, "get", "--json", socket_path=daemon.socket)
    assert loaded == []
    assert [job["JobId"] for job in json.loads(stdout)] == [job_id]
    loaded, _ = heavy_modules(tmp_path, "cancel", job_id, socket_path=daemon.socket)
    assert loaded == []


def test_the_command_table_names_every_command_of_every_module() -> None:
    """``COMMAND_MODULES`` (what the group loads on demand) is exactly the modules' COMMANDS:
    a command added to a module and not to the table would be missing from the CLI."""
    import importlib

    from openbits.cli.openbits import COMMAND_MODULES

    found: dict[str, str] = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(f"openbits.cli.openbits.{module}").COMMANDS:
            assert command.name is not None
            found[command.name] = module
    assert found == COMMAND_MODULES


def test_a_command_loads_its_own_module_only(tmp_path: Path) -> None:
    """``openbits upload --help`` imports the upload commands' module, not the others (each
    costs start-up); ``openbits --help`` lists every command all the same."""
    script = (
        "import json, sys; sys.argv = ['openbits', 'upload', '--help']\n"
        "from openbits.cli.openbits import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "ours = [m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('openbits.cli.openbits.')]\n"
        "print(json.dumps(ours), file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(json.loads(run.stderr.strip().splitlines()[-1]))
    assert "uploads" in loaded
    assert not loaded & {"jobs", "files", "service", "store", "transfer", "watch", "uploadserver"}
    listed = subprocess.run(
        [sys.executable, "-m", "openbits", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("create", "add-ranges", "transfer", "upload", "watch", "serve", "store", "upload-server"):
        assert f"\n  {name} " in listed or f"\n    {name} " in listed, name
