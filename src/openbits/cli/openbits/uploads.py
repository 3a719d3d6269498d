"""The upload commands (SPEC §8): ``upload`` (a one-shot upload or upload-reply job: create,
add, resume, follow, complete) and ``reply`` (an upload-reply job's reply: its file name and
progress, its data, or where it goes)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from openbits.cli import render
from openbits.cli.openbits.exits import handled
from openbits.cli.openbits.oneshot import run_one_shot
from openbits.cli.openbits.options import (
    Context,
    absolute,
    job_argument,
    json_option,
    parse_priority,
    pass_ctx,
    socket_option,
)
from openbits.cli.render import print_json
from openbits.errors import NotImplementedValue
from openbits.model import JobType


@click.command()
@click.argument("source", metavar="FILE")
@click.argument("url")
@click.option(
    "--reply",
    "reply_file",
    default=None,
    metavar="PATH",
    help="An upload-reply job: the server application's reply is saved to PATH.",
)
@click.option("--name", default=None, help="The job's display name (default: the file's name).")
@click.option("--priority", "-p", default="foreground", help="Priority (default foreground).")
@click.option(
    "--async", "--no-wait", "is_async", is_flag=True, help="Start the job and print its JobId; don't wait."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--no-retry", is_flag=True, help="Fail at the first transient error (exit 1), not retry it.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Give up after SECONDS.")
@json_option("the final instance")
@socket_option
@pass_ctx
@handled
def upload(
    ctx: Context,
    source: str,
    url: str,
    reply_file: str | None,
    name: str | None,
    priority: str,
    is_async: bool,
    quiet: bool,
    no_retry: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Upload FILE to URL, a server of the BITS upload protocol (openbits upload-server, IIS).

    Creates an upload job (with --reply, an upload-reply job whose reply is saved to PATH),
    adds the file, resumes it, shows progress, and completes it once the server has every
    byte (and the reply is fetched): as 'transfer' does for downloads. The file is read with
    your rights and must not change until then (BG_E_LOCAL_FILE_CHANGED). A transient error
    is retried in the same upload session, from the last byte the server acknowledged. On an
    error the job is cancelled (the server is told to drop the session) and the exit code is
    1; Ctrl-C cancels it too (exit 130).

    \b
    Examples:
      openbits upload report.pdf https://files.example.com/inbox/report.pdf
      openbits upload data.csv https://api.example.com/import/data.csv --reply result.xml
    """
    source = absolute(source)
    client = ctx.client
    options: dict[str, Any] = {
        "priority": parse_priority(priority),
        "job_type": JobType.UPLOAD if reply_file is None else JobType.UPLOAD_REPLY,
        "reply_file_name": None if reply_file is None else absolute(reply_file),
    }
    pairs = [(url, source)]
    display_name = name or os.path.basename(source)
    final = run_one_shot(
        client,
        pairs,
        display_name,
        options,
        "upload",
        is_async=is_async,
        quiet=quiet,
        no_retry=no_retry,
        timeout=timeout,
        as_json=as_json,
    )
    if final is not None and not (quiet or as_json):
        click.echo(
            "Upload complete." if reply_file is None else f"Upload complete; reply in {reply_file}.", err=True
        )


@click.command()
@job_argument()
@click.option("--data", is_flag=True, help="Write the reply's bytes to stdout (GetReplyData: up to 1 MiB).")
@click.option(
    "--file",
    "reply_file",
    default=None,
    metavar="PATH",
    help="Set where the reply goes at Complete (SetReplyFileName).",
)
@json_option("ReplyFileName and ReplyProgress (with --data: GetReplyData's answer, base64)")
@socket_option
@pass_ctx
@handled
def reply(ctx: Context, job: str, data: bool, reply_file: str | None, as_json: bool) -> None:
    """Show an upload-reply job's reply: where it goes and how much of it came.

    With --data, the reply itself (once the job is TRANSFERRED, also after Complete; up to
    1 MiB, else BG_E_TOO_LARGE: read the file after Complete). With --file PATH, the reply
    goes to PATH at Complete (before the reply is fetched; PATH's directory must be yours
    to write in). Other jobs have no reply: E_NOTIMPL.

    \b
    Examples:
      openbits reply nightly                     # file name and progress
      openbits reply nightly --data > reply.xml
      openbits reply nightly --file ~/replies/nightly.xml
    """
    if data and reply_file is not None:
        raise click.UsageError("give --data or --file, not both")
    client = ctx.client
    if reply_file is not None:
        client.set_reply_file_name(job, absolute(reply_file))
        if as_json:
            print_json({"ReturnValue": 0})
        return
    if data:
        if as_json:
            print_json(client.invoke(job, "GetReplyData"))
            return
        sys.stdout.buffer.write(client.get_reply_data(job))
        sys.stdout.buffer.flush()
        return
    found = client.get_job(job, files=False, include_finished=True)
    if found.job_type is not JobType.UPLOAD_REPLY:
        raise NotImplementedValue(f"job {found.job_id} is not an upload-reply job: it has no reply")
    progress = found.reply_progress
    if as_json:
        print_json({"ReplyFileName": found.reply_file_name, "ReplyProgress": found.raw.get("ReplyProgress")})
        return
    click.echo(f"ReplyFileName: {found.reply_file_name or '(set when the file is added)'}")
    if progress is not None:
        total = "?" if progress.bytes_total is None else render.format_bytes(progress.bytes_total)
        click.echo(f"ReplyProgress: {render.format_bytes(progress.bytes_transferred)} of {total}")


COMMANDS = (upload, reply)
