"""``openbits upload-server``: serve the BITS upload protocol for a directory (SPEC §8)."""

from __future__ import annotations

import os

import click

from openbits.cli.openbits.exits import EXIT_BITS_ERROR, EXIT_USAGE, fail


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/openbits/upload-server"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "openbits", "upload-server")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"bad --listen {value!r}: HOST:PORT expected", EXIT_USAGE)
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command(name="upload-server")
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The directory URL paths map to; uploads never leave it.",
)
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT", help="Where to listen."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A TOML file: allow_uploads, max_upload_bytes, allow_overwrite, notification_*, ... per directory.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where sessions are kept across restarts (not inside --root). "
    "Default /var/lib/openbits/upload-server as root, else ~/.local/state/openbits/upload-server.",
)
def upload_server(root: str, listen: str, config_path: str | None, state_dir: str | None) -> None:
    """Serve the BITS upload protocol (IIS's BITS extension) for the files under --root.

    Windows BITS clients and openbits upload jobs send files to
    http://HOST:PORT/PATH, which lands at ROOT/PATH once the client closes its session.
    Sessions survive a restart; abandoned ones are removed after session_timeout_s.
    Put it behind nginx for TLS (README: "Upload server").

    \b
    Example:
      openbits upload-server --root /srv/incoming --listen 0.0.0.0:8080
    """
    from aiohttp import web

    from openbits.uploadserver import ServerSettings, make_app
    from openbits.uploadserver.app import StateDirInUse

    host, port = _listen(listen)
    try:
        settings = ServerSettings.load(root, state_dir or _default_state_dir(), config_path)
        app = make_app(settings)
    except (OSError, ValueError) as e:
        fail(f"bad configuration: {e}", EXIT_USAGE)
    import logging  # (here: the other commands need no logging)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("openbits.uploadserver")

    def serving(_aiohttp_says: str) -> None:  # (run_app's print: once the port takes requests)
        log.info("serving %s on http://%s:%d/ (state in %s)", settings.root, host, port, settings.state_dir)

    try:
        web.run_app(app, host=host, port=port, print=serving, access_log=None, handle_signals=True)
    except StateDirInUse as e:
        fail(str(e), EXIT_BITS_ERROR)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}", EXIT_BITS_ERROR)


COMMANDS = (upload_server,)
