"""The /SET* switches and the other methods of one call: properties, extension setters,
credentials, proxy settings, client certificates, custom headers and ACL flags."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from openbits.cli.bitsadmin.context import Ctx, Handler, SwitchTable, _Failed
from openbits.cli.bitsadmin.parsing import (
    _SCHEMES,
    _TARGETS,
    _acl_flags,
    _nargs,
    _null,
    _priority,
    _store_location,
    _ulong,
)
from openbits.cli.bitsadmin.usage import Usage
from openbits.cli.bitsadmin.verbs import _job
from openbits.errors import BitsError, HResult
from openbits.model import JobPriority, ProxyUsage

SWITCHES = SwitchTable()
switch = SWITCHES.switch


def _patch(prop: str, parse: Callable[[str], Any], said: Callable[[Any], str], action: str) -> Handler:
    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 2)
        value = parse(args[1])
        ctx.call(action, lambda: ctx.client.set_properties(args[0], **{prop: value}))
        ctx.out.line(said(value))
        return 0

    return run


SWITCHES["/SETDISPLAYNAME"] = _patch(
    "DisplayName", str, lambda v: f"Display name set to {v}.", "Unable to set display name"
)
SWITCHES["/SETDESCRIPTION"] = _patch(
    "Description", str, lambda v: f"Description set to {v}.", "Unable to set description"
)
SWITCHES["/SETPRIORITY"] = _patch(
    "Priority", _priority, lambda v: f"Priority set to {JobPriority(v).name}.", "Unable to set priority"
)
SWITCHES["/SETMINRETRYDELAY"] = _patch(
    "MinimumRetryDelay",
    _ulong,
    lambda v: f"Minimum retry delay set to {v}.",
    "Unable to set new minimum retry delay",
)
SWITCHES["/SETNOPROGRESSTIMEOUT"] = _patch(
    "NoProgressTimeout",
    _ulong,
    lambda v: f"No progress timeout set to {v}.",
    "Unable to set new no progress timeout",
)


def _method(
    method: str, param: str, parse: Callable[[str], Any], said: Callable[[Any], str], action: str
) -> Handler:
    """A setter that is a method of one parameter (SPEC §6 extension setters)."""

    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 2)
        value = parse(args[1])
        ctx.call(action, lambda: ctx.client.invoke(args[0], method, **{param: value}))
        ctx.out.line(said(value))
        return 0

    return run


SWITCHES["/SETREPLYFILENAME"] = _method(
    "SetReplyFileName",
    "ReplyFileName",
    str,  # (as given, as /ADDFILE's local name: the daemon refuses a relative path)
    lambda v: f"Reply file name set to {v}.",
    "Unable to set reply file name",
)
SWITCHES["/SETNOTIFYFLAGS"] = _method(
    "SetNotifyFlags",
    "NotifyFlags",
    _ulong,
    lambda v: f"Notification flags set to {v}.",
    "Unable to set notification flags",
)
SWITCHES["/SETSECURITYFLAGS"] = _method(
    "SetSecurityFlags",
    "SecurityFlags",
    _ulong,
    lambda v: f"Security flags set to {v}.",
    "Unable to set security flags",
)
SWITCHES["/SETMAXDOWNLOADTIME"] = _method(
    "SetMaximumDownloadTime",
    "MaximumDownloadTime",
    _ulong,
    lambda v: f"Maximum download time set to {v}.",
    "Unable to set maximum download time",
)


@switch("/SETCUSTOMHEADERS")
def _set_custom_headers(ctx: Ctx, args: list[str]) -> int:
    if len(args) < 2:
        raise Usage("Invalid number of arguments.")
    job, headers = args[0], args[1:]
    text = None if headers == ["NULL"] or headers == [""] else "".join(h + "\r\n" for h in headers)
    ctx.call(
        "Unable to set custom headers", lambda: ctx.client.invoke(job, "SetCustomHeaders", CustomHeaders=text)
    )
    ctx.out.line("Custom headers removed." if text is None else f"Custom headers set ({len(headers)}).")
    return 0


@switch("/SETNOTIFYCMDLINE")
def _set_notify_cmdline(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 2, 3)
    job, program = args[0], args[1]
    params = args[2] if len(args) == 3 else "NULL"
    ctx.call(
        "Unable to set the notification command line",
        lambda: ctx.client.invoke(job, "SetNotifyCmdLine", Program=_null(program), Parameters=_null(params)),
    )
    ctx.out.line(f"notification command line set to '{program}' '{params}'.")
    return 0


def _target_scheme(target: str, scheme: str) -> tuple[int, int]:
    if target.upper() not in _TARGETS:
        raise Usage(f"'{target}' is not a valid credential target.  It must be 'proxy' or 'server'.")
    if scheme.upper() not in _SCHEMES:
        raise Usage(
            f"'{scheme}' is not a valid credential scheme.\n"
            "It must be one of the following:\n    basic\n    digest\n    ntlm\n    negotiate\n    passport"
        )
    return _TARGETS[target.upper()], _SCHEMES[scheme.upper()]


#: a password given as one of these is read from stdin (or asked for on a terminal) instead
PASSWORD_FROM_STDIN = ("*", "-")


def _password(given: str, user: str | None) -> str | None:
    """bitsadmin takes the password on the command line (its syntax, kept for scripts), where
    other users may see it (ps, /proc); ``*`` or ``-`` reads it from stdin instead: asked
    for without echo on a terminal, else its first line."""
    if given not in PASSWORD_FROM_STDIN:
        if given.upper() != "NULL" and sys.stderr.isatty():
            print(
                "warning: a password on the command line can be read by other users of this "
                "machine; give * to be asked for it (or to read it from stdin)",
                file=sys.stderr,
            )
        return _null(given)
    try:
        if sys.stdin.isatty():
            import getpass

            return getpass.getpass(f"Password for {user}: ")
        return sys.stdin.readline().rstrip("\r\n")
    except (OSError, EOFError) as e:  # (no stdin to read: closed, or not readable)
        raise Usage(f"cannot read the password from stdin ({e or type(e).__name__}).") from None


@switch("/SETCREDENTIALS")
def _set_credentials(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 5)
    job, target, scheme, user, given = args
    t, s = _target_scheme(target, scheme)
    password = _password(given, _null(user))
    # NULL user and password: NTLM/Negotiate with the implicit credentials (bits-spec §5.7)
    ctx.call(
        "Unable to add credentials",
        lambda: ctx.client.invoke(
            job, "SetCredentials", Target=t, Scheme=s, UserName=_null(user), Password=password
        ),
    )
    ctx.out.line("OK.")
    return 0


@switch("/REMOVECREDENTIALS")
def _remove_credentials(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 3)
    job, target, scheme = args
    t, s = _target_scheme(target, scheme)
    result = ctx.call(
        "Unable to remove credentials",
        lambda: ctx.client.invoke(job, "RemoveCredentials", Target=t, Scheme=s),
    )
    ctx.out.line("no matching credential was found." if result.get("ReturnValue") == 1 else "OK.")
    return 0


@switch("/SETPROXYSETTINGS")
def _set_proxy_settings(ctx: Ctx, args: list[str]) -> int:
    if len(args) < 2:
        raise Usage("/SetProxySettings must be followed by a job name or guid, then a proxy usage name")
    job, usage = args[0], args[1].upper()
    if usage not in ProxyUsage.__members__:
        raise Usage("proxy usage must be one of OVERRIDE, NO_PROXY, AUTODETECT or PRECONFIG")
    params: dict[str, Any] = {"ProxyUsage": int(ProxyUsage[usage])}
    proxies = bypass = None
    if usage == "OVERRIDE":
        if len(args) != 4:
            raise Usage("OVERRIDE must be followed by a proxy list and a proxy bypass list")
        proxies, bypass = _null(args[2]), _null(args[3]) or None
        # bitsadmin's proxy list is comma-delimited; the WMI ProxyList is space-delimited
        params["ProxyList"] = None if proxies is None else " ".join(p for p in proxies.split(",") if p)
        params["ProxyBypassList"] = bypass
    elif len(args) != 2:
        raise Usage("Invalid number of arguments.")
    ctx.call("Unable to set proxy settings", lambda: ctx.client.invoke(job, "SetProxySettings", **params))
    ctx.out.line(f"Proxy usage set to {usage}.")
    if usage == "OVERRIDE":
        ctx.out.line(f"Proxy list set to {proxies or 'NULL'}.")
        ctx.out.line(f"Proxy bypass list set to {bypass or 'NULL'}.")
    return 0


def _set_client_certificate(ctx: Ctx, job: str, location: str, store: str, method: str, **which: Any) -> int:
    """SetClientCertificateById / ByName: the store, and the certificate's hash or subject."""
    ctx.call(
        "Unable to set the client certificate",
        lambda: ctx.client.invoke(
            job, method, CertStoreLocation=_store_location(location), StoreName=store, **which
        ),
    )
    ctx.out.line("Client certificate set.")
    return 0


@switch("/SETCLIENTCERTIFICATEBYID")
def _set_client_certificate_by_id(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 4)
    job, location, store, cert_id = args
    try:
        cert_hash = list(bytes.fromhex(cert_id.removeprefix("0x")))
    except ValueError:
        raise Usage(f"'{cert_id}' is not a hexadecimal certificate hash.") from None
    return _set_client_certificate(ctx, job, location, store, "SetClientCertificateById", CertHash=cert_hash)


@switch("/SETCLIENTCERTIFICATEBYNAME")
def _set_client_certificate_by_name(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 4)
    job, location, store, subject = args
    method = "SetClientCertificateByName"
    return _set_client_certificate(ctx, job, location, store, method, SubjectName=subject)


def _verb(method: str, action: str, done: str) -> Handler:
    """A switch that calls a method of the job without parameters."""

    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 1)
        ctx.call(action, lambda: ctx.client.invoke(args[0], method))
        ctx.out.line(done)
        return 0

    return run


SWITCHES["/REMOVECLIENTCERTIFICATE"] = _verb(
    "RemoveClientCertificate", "Unable to remove the client certificate", "Client certificate removed."
)
SWITCHES["/MAKECUSTOMHEADERSWRITEONLY"] = _verb(
    "MakeCustomHeadersWriteOnly",
    "Unable to make the custom headers write-only",
    "Custom headers are now write-only.",
)


def _acl_not_implemented(ctx: Ctx) -> NoReturn:
    raise _Failed(
        "Unable to set ACL flags",
        BitsError.from_hresult(HResult.E_NOTIMPL, "ACL propagation flags (SMB only) are not supported"),
    )


@switch("/SETACLFLAGS", "/SETACLFLAG")
def _set_acl_flags(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 2)
    _acl_flags(args[1])
    _job(ctx, args[0])  # an unknown job is still BG_E_NOT_FOUND
    _acl_not_implemented(ctx)
