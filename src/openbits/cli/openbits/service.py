"""The daemon and the shell: serve, policy, token, completion and version."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from openbits.cli import render
from openbits.cli.openbits.exits import EXIT_USAGE, fail, handled
from openbits.cli.openbits.options import Context, json_option, pass_ctx, policy_value, socket_option
from openbits.cli.render import print_json
from openbits.errors import BitsError


@click.command()
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Where the job store lives."
)
@click.option("--socket", "socket_path", default=None, metavar="PATH", help="The Unix socket to serve on.")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="A TOML file."
)
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the API over TCP (e.g. 127.0.0.1:8765); callers there need a bearer token.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Serve --listen over HTTPS with this certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The private key of --tls-cert (PEM; mode 0600).",
)
@click.option(
    "--insecure-listen",
    is_flag=True,
    default=None,
    help="Allow plain HTTP on a --listen address other than loopback (tokens in clear).",
)
@click.option(
    "--system",
    is_flag=True,
    help="Be the machine's daemon: state in /var/lib/openbits, socket /run/openbits/openbits.sock "
    "(0666), settings from /etc/openbits/openbits.toml if present; needs root.",
)
def serve(
    state_dir: str | None,
    socket_path: str | None,
    config_path: str | None,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_listen: bool | None,
    system: bool,
) -> None:
    """Run the daemon in the foreground (SIGTERM or SIGINT stop it cleanly).

    The job store is SQLite in the state directory (default $XDG_STATE_HOME/openbits, else
    ~/.local/state/openbits); the socket is $XDG_RUNTIME_DIR/openbits/openbits.sock (else in
    the state directory), mode 0600. The TOML file holds the settings of README
    "Configuration" (bandwidth limits and schedule, retries, limits).

    With --listen (or listen = "HOST:PORT" in the file) the API is served over TCP too;
    every request there needs "Authorization: Bearer <token>" ('openbits token create').
    With --tls-cert and --tls-key (tls_cert, tls_key) it is HTTPS. Plain HTTP is served
    only on a loopback address, unless --insecure-listen (insecure_listen = true) says so.

    With --system it is the machine's daemon, serving every user: each caller is told apart
    by the socket's peer credentials and sees only his jobs, and every file of a job is
    created, renamed, deleted and read with its owner's rights (a helper process per user).

    \b
    Example:
      openbits serve --config ~/.config/openbits.toml &
      openbits serve --listen 127.0.0.1:8765 &
      openbits serve --listen 0.0.0.0:8765 --tls-cert cert.pem --tls-key key.pem &
      sudo openbits serve --system
    """
    from openbits.config import Config
    from openbits.daemon import run

    try:
        config = Config.load(
            config_path,
            system=system,
            state_dir=os.path.abspath(state_dir) if state_dir else None,
            socket=os.path.abspath(socket_path) if socket_path else None,
            listen=listen,
            tls_cert=os.path.abspath(tls_cert) if tls_cert else None,
            tls_key=os.path.abspath(tls_key) if tls_key else None,
            insecure_listen=insecure_listen,
        )
    except (OSError, ValueError, TypeError) as e:
        fail(f"bad configuration: {e}", EXIT_USAGE)
    sys.exit(run(config))


@click.group(invoke_without_command=True)
@json_option("the BitsServicePolicy instance")
@socket_option
@click.pass_context
@handled
def policy(cctx: click.Context, as_json: bool) -> None:
    """Show the service policy: bandwidth limits, their schedule, scheduling.

    Prints the BitsServicePolicy instance: the limits per priority, the weekly schedule or
    work hours, the number of background jobs that run at once, the time slice, and the
    limit in force now. 'policy set' changes it (administrators).

    \b
    Example:
      openbits policy --json | jq .CurrentBandwidthLimitText
    """
    if cctx.invoked_subcommand is not None:
        return
    result = cctx.ensure_object(Context).client.policy()
    if as_json:
        print_json(result)
    else:
        render.print_policy(result)


@policy.command(name="set")
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option("the new BitsServicePolicy instance")
@socket_option
@pass_ctx
@handled
def policy_set(ctx: Context, settings: tuple[str, ...], as_json: bool) -> None:
    """Change the service policy (administrators): all the settings or none.

    KEY is a BitsServicePolicy property (MaxBandwidth, BandwidthSchedule, High-, Normal-,
    LowPriorityBandwidth, ForegroundLimited, WorkHours, WorkBandwidth, NonWorkBandwidth,
    MaxConcurrentBackgroundJobs, TimeSlice, MaxConnectionsPerJob, BackgroundYield,
    YieldTargetDelayMs). VALUE is JSON when it parses (10, true, null) and a string otherwise:
    rates as 10M, 512k or off, the schedule as rclone's "Mon-08:00,1M Mon-18:00,off",
    BackgroundYield as the priorities that yield to other traffic ("HIGH,NORMAL,LOW", "" for
    none). The change applies at once, persists, and is printed.

    \b
    Example:
      sudo openbits policy set MaxBandwidth=10M "WorkHours=Mon-Fri 08-17" WorkBandwidth=1M
    """
    changes: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{setting!r}: use KEY=VALUE", param_hint="KEY=VALUE")
        changes[key.strip()] = policy_value(value)
    result = ctx.client.set_policy(**changes)
    if as_json:
        print_json(result)
    else:
        render.print_policy(result)


@click.group()
def token() -> None:
    """Bearer tokens for the daemon's TCP listener (openbits serve --listen).

    A token acts as you on the TCP listener, within its scope, until it expires or is
    revoked. Scopes: read (list, get, query, events), submit (also create and manage your
    own jobs; the default) and admin (all you may do: an administrator's admin token acts on
    every user's jobs and the policy). It is shown once, when it is created: the daemon
    keeps only its hash. Tokens are managed over the Unix socket only.

    \b
    Example:
      TOKEN=$(openbits token create --scope read --expires 7d --description "dashboard")
      curl --cacert ca.pem -H "Authorization: Bearer $TOKEN" https://host:8765/root/microsoft/bits/BitsClientJob
    """


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | None) -> int | None:
    """``90``, ``30m``, ``12h``, ``7d``, ``2w`` as seconds; ``never`` (or nothing) as None."""
    if value is None or value.strip().lower() in ("", "never"):
        return None
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1]) if text[-1].isalpha() else 1
    number = text[:-1] if text[-1].isalpha() else text
    if unit is None or not number.isdigit() or int(number) == 0:
        raise click.BadParameter(
            f"{value!r}: use a duration such as 3600, 30m, 12h, 7d or 2w", param_hint="--expires"
        )
    return int(number) * unit


@token.command(name="create")
@click.option("--description", "-d", default="", help="What the token is for (≤ 256 characters).")
@click.option(
    "--scope",
    type=click.Choice(["read", "submit", "admin"], case_sensitive=False),
    default="submit",
    show_default=True,
    help="What it may do: read, submit (also your own jobs), admin (all you may do).",
)
@click.option(
    "--expires",
    metavar="DURATION",
    default=None,
    help="Expire after 3600, 30m, 12h, 7d, 2w (default: never).",
)
@json_option('{"TokenId", "Token", "Owner", "Description", "CreationTime", "Scope", "ExpirationTime"}')
@socket_option
@pass_ctx
@handled
def token_create(ctx: Context, description: str, scope: str, expires: str | None, as_json: bool) -> None:
    """Create a token and print it (only now: it cannot be shown again).

    Without --json only the token is printed, for a script to keep; its TokenId (to revoke
    it) is in 'openbits token list'.

    \b
    Example:
      openbits token create -d "ci runner" > ~/.config/openbits/token && chmod 600 ~/.config/openbits/token
      openbits token create --scope read --expires 7d -d "dashboard"
    """
    lifetime_s = parse_duration(expires)
    result = ctx.client.create_token(description, scope=scope.lower(), expires_after_s=lifetime_s)
    if as_json:
        print_json(result)
    else:
        click.echo(result["Token"])


@token.command(name="list")
@click.option("--all-users", is_flag=True, help="Every user's tokens (administrators).")
@json_option("the tokens (never the tokens themselves)")
@socket_option
@pass_ctx
@handled
def token_list(ctx: Context, all_users: bool, as_json: bool) -> None:
    """List your tokens: id, owner, scope, creation and expiry time, description (never the token).

    \b
    Example:
      openbits token list --json | jq -r '.[].TokenId'
    """
    result = ctx.client.tokens(all_users)
    if as_json:
        print_json(result)
        return
    render.print_tokens(result)


@token.command(name="revoke")
@click.argument("token_id", metavar="TOKEN_ID")
@json_option('{"ReturnValue": 0}')
@socket_option
@pass_ctx
@handled
def token_revoke(ctx: Context, token_id: str, as_json: bool) -> None:
    """Revoke a token (yours; an administrator: anyone's). It is refused at once.

    \b
    Example:
      openbits token revoke "{6F9619FF-8B86-D011-B42D-00C04FC964FF}"
    """
    result = ctx.client.revoke_token(token_id)
    if as_json:
        print_json(result)
    else:
        click.echo(f"revoked {token_id}")


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Commands, options, choices and your jobs' names complete. The script calls openbits
    with _OPENBITS_COMPLETE set (click's completion): source it from your shell's start-up
    file, or install it where your shell looks for completions.

    \b
    Examples:
      eval "$(openbits completion bash)"                   # in ~/.bashrc
      eval "$(openbits completion zsh)"                    # in ~/.zshrc
      openbits completion fish > ~/.config/fish/completions/openbits.fish
    """
    from click.shell_completion import get_completion_class

    from openbits.cli.completion import QuotingBashComplete

    cls = QuotingBashComplete if shell == "bash" else get_completion_class(shell)
    if cls is None:  # (click knows the three)
        raise click.BadParameter(shell, param_hint="SHELL")
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "openbits", "_OPENBITS_COMPLETE").source())


@click.command()
@json_option('the versions ({"Version": "…", "DaemonVersion": "…" or null})')
@socket_option
@click.pass_context
def version(cctx: click.Context, as_json: bool) -> None:
    """Print the version of openbits, and of the daemon when one answers.

    \b
    Example:
      openbits version
    """
    from openbits import __version__
    from openbits.client import DaemonUnavailable

    daemon: str | None = None
    with contextlib.suppress(DaemonUnavailable, BitsError, OSError, ValueError):
        answer = cctx.ensure_object(Context).client.request("GET", "/version")
        daemon = str(answer["Version"]) if isinstance(answer, dict) else None
    if as_json:
        print_json({"Version": __version__, "DaemonVersion": daemon})
    else:
        click.echo(f"openbits {__version__}" + (f" (daemon {daemon})" if daemon else " (no daemon answers)"))


COMMANDS = (serve, policy, token, completion, version)
