"""The file commands: add, add-set, add-ranges, files, set-remote-name, replace-prefix and
headers."""

from __future__ import annotations

from typing import IO

import click

from openbits.cli import render
from openbits.cli.openbits.exits import handled
from openbits.cli.openbits.options import (
    Context,
    _answered,
    absolute,
    job_argument,
    json_option,
    parse_file_set,
    parse_ranges,
    pass_ctx,
    socket_option,
    source_url,
)
from openbits.cli.render import print_json


@click.command()
@job_argument()
@click.argument("url")
@click.argument("dest")
@click.option(
    "--digest",
    default=None,
    metavar="DIGEST",
    help="The expected digest of its bytes (sha-256=:<base64>: or sha256:<hex>; sha-512 too).",
)
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add(ctx: Context, job: str, url: str, dest: str, digest: str | None, as_json: bool) -> None:
    """Add a file: URL (http, https, file:// or a path) to DEST.

    DEST is a local path (relative to the current directory); its directory must exist. The
    file appears there only when the job is completed (Add-BitsFile). For an upload job URL
    is where the file goes and DEST the file sent (its one file: see 'upload'). With --digest
    the file's bytes must match it before it counts as transferred (else the job is in
    ERROR with BG_E_VALIDATION_FAILED and nothing is kept).

    \b
    Example:
      openbits add nightly https://example.com/a.tar /srv/a.tar --digest sha256:9f86d08…
    """
    extra = {} if digest is None else {"Digest": digest}
    result = ctx.client.invoke(job, "AddFile", RemoteUrl=source_url(url), LocalFile=absolute(dest), **extra)
    _answered(result, as_json)


@click.command(name="add-set")
@job_argument()
@click.argument("file", metavar="FILE|-", type=click.File("r"))
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add_set(ctx: Context, job: str, file: IO[str], as_json: bool) -> None:
    """Add the files listed in FILE (or stdin): all of them or none.

    One 'URL DEST' pair a line, as bitsadmin /addfileset reads them, optionally followed by
    the file's expected digest ('URL DEST sha256:<hex>'); blank lines and lines starting
    with # are skipped; quote a name that has spaces. The files are added in one
    AddFileSet call, so a bad line or a refused file adds nothing.

    \b
    Example:
      printf '%s\\n' "https://host/a.iso a.iso" "https://host/b.iso b.iso" | openbits add-set nightly -
    """
    where = "stdin" if file.name == "<stdin>" else file.name
    files = parse_file_set(file.read(), where)
    result = ctx.client.invoke(job, "AddFileSet", Files=files)
    _answered(result, as_json)


@click.command(name="add-ranges")
@job_argument()
@click.argument("url")
@click.argument("dest")
@click.argument("ranges")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add_ranges(ctx: Context, job: str, url: str, dest: str, ranges: str, as_json: bool) -> None:
    """Add byte ranges of a remote file as one local file.

    RANGES is OFFSET:LENGTH,… (a LENGTH of eof runs to the end of the file). The ranges
    are downloaded one after the other into DEST, which holds only them (AddFileWithRanges,
    bitsadmin /addfilewithranges). HTTP and HTTPS only; ranges must not overlap.

    \b
    Example:
      openbits add-ranges nightly https://host/disk.img head+tail.bin 0:512,1048576:eof
    """
    result = ctx.client.invoke(
        job,
        "AddFileWithRanges",
        RemoteUrl=source_url(url),
        LocalFile=absolute(dest),
        Ranges=parse_ranges(ranges),
    )
    _answered(result, as_json)


@click.command()
@job_argument()
@click.option("--include-finished", is_flag=True, help="Also for an ACKNOWLEDGED or CANCELLED job.")
@json_option("the Files array (BitsClientFile instances)")
@socket_option
@pass_ctx
@handled
def files(ctx: Context, job: str, include_finished: bool, as_json: bool) -> None:
    """List a job's files: progress, bytes, remote URL and local file.

    One row a file, in the job's order (bitsadmin /listfiles); a file of ranges shows them
    after its URL.

    \b
    Example:
      openbits files nightly
    """
    instance = ctx.client.get_job(job, include_finished=include_finished).raw
    listed = instance.get("Files") or []
    if as_json:
        print_json(listed)
    elif listed:
        render.print_files(listed)


@click.command(name="set-remote-name")
@job_argument()
@click.argument("local")
@click.argument("url")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def set_remote_name(ctx: Context, job: str, local: str, url: str, as_json: bool) -> None:
    """Change the URL a file of the job comes from.

    LOCAL names the file by its local path (relative to the current directory). The file
    goes on from where it is when the new URL serves the same content (SetRemoteName).

    \b
    Example:
      openbits set-remote-name nightly /srv/a.tar https://mirror.example.com/a.tar
    """
    result = ctx.client.invoke(job, "SetRemoteName", LocalFile=absolute(local), RemoteUrl=source_url(url))
    _answered(result, as_json)


@click.command(name="replace-prefix")
@job_argument()
@click.argument("old")
@click.argument("new")
@json_option('the answer ({"ReturnValue": 0, "FilesChanged": N})')
@socket_option
@pass_ctx
@handled
def replace_prefix(ctx: Context, job: str, old: str, new: str, as_json: bool) -> None:
    """Point the job's URLs that start with OLD at NEW instead.

    Every file not yet transferred whose URL starts with OLD (any case) gets NEW instead
    (bitsadmin /replaceremoteprefix). Prints how many files changed.

    \b
    Example:
      openbits replace-prefix nightly http://old.example.com https://new.example.com
    """
    result = ctx.client.invoke(job, "ReplaceRemotePrefix", OldPrefix=old, NewPrefix=new)
    count = int(result.get("FilesChanged", 0))
    _answered(result, as_json, f"{count} file{'s' if count != 1 else ''} changed")


@click.command()
@job_argument()
@click.option("--file", "local", default=None, metavar="LOCAL", help="The file (its local path).")
@json_option('the answer ({"ReturnValue": 0, "ResponseHeaders": "…"})')
@socket_option
@pass_ctx
@handled
def headers(ctx: Context, job: str, local: str | None, as_json: bool) -> None:
    """Show the HTTP response headers a file of the job last received.

    --file names the file by its local path; a job of one file needs none. Nothing is
    printed but "no response received yet" before one came (GetResponseHeaders; --json: null).

    \b
    Example:
      openbits headers nightly --file /srv/a.tar | grep -i etag
    """
    if local is None:
        listed = ctx.client.get_job(job).files
        if len(listed) != 1:
            raise click.UsageError(f"the job has {len(listed)} files: name one with --file LOCAL")
        local = listed[0].local_file
    else:
        local = absolute(local)
    result = ctx.client.invoke(job, "GetResponseHeaders", LocalFile=local)
    if as_json:
        print_json(result)
        return
    text = result.get("ResponseHeaders")
    click.echo(str(text).replace("\r\n", "\n").rstrip("\n") if text else "no response received yet")


COMMANDS = (add, add_set, add_ranges, files, set_remote_name, replace_prefix, headers)
