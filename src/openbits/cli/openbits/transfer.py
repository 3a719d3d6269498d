"""The transfer commands: ``transfer`` (a one-shot job: create, add, resume, follow,
complete) and the transfer options of a job: credentials, proxy and client certificate."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from openbits.cli.openbits.exits import handled
from openbits.cli.openbits.oneshot import run_one_shot
from openbits.cli.openbits.options import (
    BitsChoice,
    Context,
    _answered,
    absolute,
    job_argument,
    json_option,
    parse_priority,
    pass_ctx,
    read_password,
    socket_option,
    source_url,
)
from openbits.client import FilePairs

if TYPE_CHECKING:
    pass

#: SetCredentials' WMI encodings (bits-spec §1.3: zero-based, unlike the COM ones)
TARGETS = ("server", "proxy")
SCHEMES = ("basic", "digest", "ntlm", "negotiate", "passport")
#: BG_JOB_PROXY_USAGE (bits-spec §2.8)
PROXY_USAGES = ("preconfig", "no-proxy", "override", "autodetect")
#: BG_CERT_STORE_LOCATION (bits-spec §2.7)
STORE_LOCATIONS = (
    "current-user",
    "local-machine",
    "current-service",
    "services",
    "users",
    "current-user-group-policy",
    "local-machine-group-policy",
    "local-machine-enterprise",
)


# -- transfer options: credentials, proxy, certificate -----------------------------------------------


@click.group()
def credentials() -> None:
    """Set or remove the credentials a job gives a server or proxy.

    A job keeps one credential per target (server, proxy) and scheme (basic, digest, ntlm,
    negotiate): it answers a 401 (407) with the strongest scheme offered that has one, and
    never sends it before being asked. The password is never taken from the command line,
    never shown again and never logged (SetCredentials, RemoveCredentials).

    \b
    Examples:
      openbits credentials set nightly --user alice              # asks for the password
      openbits credentials set nightly --user alice --password-stdin < ~/.secrets/alice
      openbits credentials set nightly --target proxy --scheme negotiate   # your Kerberos ticket
      openbits credentials remove nightly --target proxy --scheme negotiate
    """


def _target_scheme_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--scheme", type=BitsChoice(SCHEMES), default="basic", show_default=True, help="The scheme."
    )(command)
    return click.option(
        "--target", type=BitsChoice(TARGETS), default="server", show_default=True, help="Who asks for it."
    )(command)


@credentials.command(name="set")
@job_argument()
@_target_scheme_options
@click.option(
    "--user",
    default=None,
    help="User name (NTLM: DOMAIN\\user, user@domain or user); the password is asked for. "
    "Without it (ntlm, negotiate): your default credentials.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin, not a prompt."
)
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def credentials_set(
    ctx: Context, job: str, target: str, scheme: str, user: str | None, password_stdin: bool, as_json: bool
) -> None:
    """Set the credentials a job answers TARGET's challenges of SCHEME with (replacing any).

    The password is asked for without echo on the terminal, or read from the first line
    of stdin with --password-stdin; never from the command line."""
    if user is None and password_stdin:
        raise click.UsageError("--password-stdin goes with --user")
    password = read_password(f"Password for {user}", password_stdin) if user is not None else None
    ctx.client.set_credentials(job, TARGETS.index(target), SCHEMES.index(scheme), user, password)
    _answered({"ReturnValue": 0}, as_json)


@credentials.command(name="remove")
@job_argument()
@_target_scheme_options
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def credentials_remove(ctx: Context, job: str, target: str, scheme: str, as_json: bool) -> None:
    """Remove the credentials of TARGET and SCHEME from a job (ReturnValue 1: there were none)."""
    t, s = TARGETS.index(target), SCHEMES.index(scheme)
    result = ctx.client.invoke(job, "RemoveCredentials", Target=t, Scheme=s)
    none = result.get("ReturnValue") == 1
    _answered(result, as_json, f"the job has no {target} {scheme} credentials" if none else None)


@click.command()
@job_argument()
@click.argument("usage", type=BitsChoice(PROXY_USAGES))
@click.option("--list", "proxies", default=None, metavar="PROXIES", help="Proxies (override).")
@click.option("--bypass", default=None, metavar="HOSTS", help="Hosts reached directly (override).")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def proxy(ctx: Context, job: str, usage: str, proxies: str | None, bypass: str | None, as_json: bool) -> None:
    """Choose how a job reaches servers (its proxy settings).

    USAGE is preconfig, no-proxy, override or autodetect (or bitsadmin's NO_PROXY, …, any
    case). preconfig (the default) uses the proxy environment (http_proxy, https_proxy,
    all_proxy, no_proxy) of the command that created the job, else the daemon's; no-proxy
    goes direct; override uses --list (proxies tried in order, comma or space separated:
    host:port, http://, https://, socks5:// or socks5h:// URLs) and --bypass (hosts
    reached directly: wildcards, addresses, <local>); autodetect uses a PAC script per file
    (SetProxySettings). The lists are kept as sent (commas become spaces) and shown by
    `openbits get`.

    \b
    Example:
      openbits proxy nightly override --list http://proxy:3128 --bypass "<local>"
    """
    if usage != "override" and (proxies is not None or bypass is not None):
        raise click.UsageError("--list and --bypass go with override only")
    params: dict[str, Any] = {"ProxyUsage": PROXY_USAGES.index(usage)}
    if usage == "override":
        if not proxies:
            raise click.UsageError("override needs --list")
        params["ProxyList"] = " ".join(p for p in proxies.replace(",", " ").split() if p)
        params["ProxyBypassList"] = bypass or None
    _answered(ctx.client.invoke(job, "SetProxySettings", **params), as_json)


@click.command()
@job_argument()
@click.option(
    "--store-location",
    type=BitsChoice(STORE_LOCATIONS),
    default="current-user",
    show_default=True,
    help="The certificate store location.",
)
@click.option("--store", "store_name", default="MY", show_default=True, help="The store name.")
@click.option(
    "--hash",
    "--by-id",
    "cert_hash",
    default=None,
    metavar="HEX",
    help="The certificate's SHA-1 hash (40 hex digits).",
)
@click.option(
    "--subject", "--by-name", default=None, help="The certificate's common name, or its whole subject."
)
@click.option("--remove", is_flag=True, help="Remove the job's client certificate.")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def cert(
    ctx: Context,
    job: str,
    store_location: str,
    store_name: str,
    cert_hash: str | None,
    subject: str | None,
    remove: bool,
    as_json: bool,
) -> None:
    """Set (or --remove) the client certificate a job shows HTTPS servers.

    The certificate is found in a store by its SHA-1 hash or its subject name
    (SetClientCertificateById, SetClientCertificateByName, RemoveClientCertificate), now,
    with the job owner's rights: a current-user store is the directory
    ~/.config/openbits/certs/STORE/, a local-machine one /etc/openbits/certs/STORE/ (the
    daemon's machine_cert_dir). A store holds PEM files (certificate and key in one file,
    or NAME.crt and NAME.key) and PKCS#12 files without a password. No such certificate:
    CRYPT_E_NOT_FOUND; its key is not in the store: NTE_NO_KEY. The key itself is never
    copied: the daemon reads it again for the job's TLS handshakes.

    \b
    Example:
      openbits cert nightly --store MY --by-name "backup client"
      openbits cert nightly --store-location local-machine --by-id 5f3c...e1
    """
    if sum((cert_hash is not None, subject is not None, remove)) != 1:
        raise click.UsageError("give exactly one of --hash, --subject and --remove")
    location = STORE_LOCATIONS.index(store_location)
    if remove:
        result = ctx.client.invoke(job, "RemoveClientCertificate")
    elif cert_hash is not None:
        try:
            digest = list(bytes.fromhex(cert_hash.removeprefix("0x").replace(":", "")))
        except ValueError:
            raise click.BadParameter(f"{cert_hash!r} is not hexadecimal", param_hint="--hash") from None
        result = ctx.client.invoke(
            job, "SetClientCertificateById", CertStoreLocation=location, StoreName=store_name, CertHash=digest
        )
    else:
        result = ctx.client.invoke(
            job,
            "SetClientCertificateByName",
            CertStoreLocation=location,
            StoreName=store_name,
            SubjectName=subject,
        )
    _answered(result, as_json)


# -- transfer --------------------------------------------------------------------------------------


def _url_name(source: str) -> str:
    """The last path segment of a URL (or a path), as curl -O names its file: '' if none."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(source).path if "://" in source else source
    name = os.path.basename(unquote(path))
    return "" if name in ("", ".", "..") else name


def _destinations(sources: list[str], dest: str | None) -> list[tuple[str, str]]:
    if dest is None:  # (one SOURCE, no DEST: its own name, here)
        name = _url_name(sources[0])
        if not name:
            raise click.UsageError(f"{sources[0]} has no file name to save it under: give a DEST")
        return [(source_url(sources[0]), absolute(name))]
    dest = absolute(dest)
    if len(sources) > 1 or os.path.isdir(dest) or dest.endswith("/"):
        if not os.path.isdir(dest):
            raise click.UsageError(f"{dest} is not a directory (needed for several sources)")
        return [(source_url(s), os.path.join(dest, _url_name(s) or "index.html")) for s in sources]
    return [(source_url(sources[0]), dest)]


def _one_shot_name(pairs: list[tuple[str, str]]) -> str:
    """A one-shot job is named after its files: ``a.iso``, ``a.iso (+2 more)``."""
    first = os.path.basename(pairs[0][1])
    return first if len(pairs) == 1 else f"{first} (+{len(pairs) - 1} more)"


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="SOURCE... [DEST]")
@click.option("--name", default=None, help="The job's display name (default: after its files).")
@click.option("--priority", "-p", default="foreground", help="Priority (default foreground).")
@click.option(
    "--max-connections",
    type=click.IntRange(1, 32),
    default=None,
    help="Connections at once (files, or ranges of a big file), 1-32 (4 for foreground, else 1).",
)
@click.option("--async", "is_async", is_flag=True, help="Start the job and print its JobId; don't wait.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--no-retry", is_flag=True, help="Fail at the first transient error (exit 1), not retry it.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Give up after SECONDS.")
@click.option(
    "--digest",
    default=None,
    metavar="DIGEST",
    help="The expected digest of the one SOURCE (sha-256=:<base64>: or sha256:<hex>; sha-512 too).",
)
@json_option("the final instance")
@socket_option
@pass_ctx
@handled
def transfer(
    ctx: Context,
    args: tuple[str, ...],
    name: str | None,
    priority: str,
    max_connections: int | None,
    is_async: bool,
    quiet: bool,
    no_retry: bool,
    timeout: float | None,
    digest: str | None,
    as_json: bool,
) -> None:
    """Download SOURCE to DEST (or several SOURCEs into directory DEST).

    Creates a job, adds the files, resumes it, shows progress, and completes it when every
    byte is there (Start-BitsTransfer). Without DEST, one SOURCE is saved under its own
    name in the current directory (as curl -O). A transient error (a server down) is
    retried, as BITS does, and said on stderr with the time of the next try; --no-retry
    fails at once, --timeout gives up after SECONDS. With --digest the file must match
    it (else BG_E_VALIDATION_FAILED and no file). On an error the job is cancelled (as
    bitsadmin /transfer does) and the exit code is 1; Ctrl-C cancels it too (exit 130).

    \b
    Example:
      openbits transfer https://host/a.iso https://host/b.iso ~/isos/
    """
    sources, dest = (list(args), None) if len(args) == 1 else (list(args[:-1]), args[-1])
    pairs = _destinations(sources, dest)
    if digest is not None and len(pairs) != 1:
        raise click.UsageError("--digest is for one SOURCE")
    files: FilePairs = pairs if digest is None else [(*pairs[0], digest)]
    client = ctx.client
    options: dict[str, Any] = {"priority": parse_priority(priority)}
    if max_connections is not None:
        options["max_connections"] = max_connections
    final = run_one_shot(
        client,
        files,
        name or _one_shot_name(pairs),
        options,
        "transfer",
        is_async=is_async,
        quiet=quiet,
        no_retry=no_retry,
        timeout=timeout,
        as_json=as_json,
    )
    if final is not None and not (quiet or as_json):
        click.echo("Transfer complete.", err=True)


COMMANDS = (transfer, credentials, proxy, cert)
