"""Tests of ``H1Client.get_small``: small answers taken whole on a kept connection, and every
answer it does not take left for ``get``, nothing asked twice.

They reuse test_h1's scripted raw-TCP server (:class:`ScriptServer`), which records every
request head each connection received, so "asked once" and "one connection" are exact.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import pytest

from openbits.transfer import h1
from openbits.transfer.h1 import ClosedEarly, H1Client
from openbits.transfer.h1head import Target
from tests.unit import test_h1
from tests.unit.test_h1 import (
    NOT_FOUND,
    ClientFactory,
    Peer,
    Script,
    ScriptServer,
    ahead_of,
    bodies,
    by_connection,
    chunked,
    fetch,
    resp,
    serving,
    stall,
)

# test_h1's fixtures, used here by name
client, make_client, scripted = test_h1.client, test_h1.make_client, test_h1.scripted

Start = Callable[[Script], Awaitable[ScriptServer]]
MAX = 64 * 1024


async def small(
    client: H1Client, base: str, paths: list[str], i: int, max_bytes: int = MAX
) -> tuple[int, bytes] | None:
    """``get_small`` of ``paths[i]`` with the rest ahead of it, its body read: (status, body) or None."""
    url = base + paths[i]
    whole = await client.get_small(url, Target(url), {}, ahead_of(base, paths, i), max_bytes)
    return None if whole is None else (whole.status, await whole.read())


def asked(server: ScriptServer) -> list[str]:
    return [req.path for peer in server.peers for req in peer.heads]


async def test_small_answers_are_taken_whole_on_the_kept_connection(
    scripted: Start, client: H1Client
) -> None:
    files = bodies(6)
    paths = list(files)
    server = await scripted(serving({p: resp(b, 'ETag: "e"') for p, b in files.items()}))
    # no connection open: nothing is asked (``get`` connects)
    assert await small(client, server.url, paths, 0) is None
    assert server.peers == []
    assert await fetch(client, server.url + paths[0], ahead=ahead_of(server.url, paths, 0)) == (
        200,
        files[paths[0]],
    )
    for i in range(1, len(paths)):
        assert await small(client, server.url, paths, i) == (200, files[paths[i]])
    assert client.small_answers == len(paths) - 1
    assert len(server.peers) == 1
    assert asked(server) == paths  # each once, in order, some sent ahead
    assert max(server.peers[0].queued_at_answer) > 1


@pytest.mark.parametrize(
    "answer",
    [
        resp(b"", "Location: /elsewhere", status="302 Found"),
        NOT_FOUND,
        chunked(b"chunked ", b"body"),
        resp(b"x" * (MAX + 1)),
        resp(b"an HTTP/1.0 body", version="HTTP/1.0"),
    ],
    ids=["redirect", "404", "chunked", "larger", "http10-ok"],
)
async def test_an_answer_not_taken_is_left_for_get_and_asked_once(
    scripted: Start, client: H1Client, answer: bytes
) -> None:
    files = bodies(4)
    paths = list(files)
    routes = {p: resp(b) for p, b in files.items()}
    routes[paths[2]] = answer
    server = await scripted(serving(routes))
    await fetch(client, server.url + paths[0], ahead=ahead_of(server.url, paths, 0))
    assert await small(client, server.url, paths, 1) == (200, files[paths[1]])
    if answer.startswith(b"HTTP/1.0"):  # (a 200 of HTTP/1.0 is taken: the connection then closes)
        assert await small(client, server.url, paths, 2) == (200, b"an HTTP/1.0 body")
        return
    assert await small(client, server.url, paths, 2) is None
    status, body = await fetch(client, server.url + paths[2], ahead=ahead_of(server.url, paths, 2))
    head, _, expected = answer.partition(b"\r\n\r\n")
    assert status == int(head.split()[1])
    if b"chunked" not in head:
        assert body == expected
    else:
        assert body == b"chunked body"
    assert await small(client, server.url, paths, 3) == (200, files[paths[3]])
    assert asked(server) == paths
    assert len(server.peers) == 1


async def test_interim_answers_are_skipped_and_connection_close_is_honoured(
    scripted: Start, client: H1Client
) -> None:
    files = bodies(3)
    paths = list(files)
    routes = {p: resp(b) for p, b in files.items()}
    routes[paths[1]] = b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + resp(files[paths[1]])
    routes[paths[2]] = resp(files[paths[2]], "Connection: close")
    server = await scripted(serving(routes))
    await fetch(client, server.url + paths[0])
    assert await small(client, server.url, paths, 1) == (200, files[paths[1]])
    assert await small(client, server.url, paths, 2) == (200, files[paths[2]])
    assert not client.warm(Target(server.url + paths[2]).key)  # closed, not kept


async def test_a_connection_closed_before_answering_gives_none_and_get_asks_on_a_new_one(
    scripted: Start, client: H1Client
) -> None:
    files = bodies(2)
    paths = list(files)

    async def answer_one_then_close(peer: Peer) -> None:
        req = await peer.request()
        assert req is not None
        await peer.answer(resp(files[req.path]))
        await peer.request()  # the next request arrives, and is never answered
        await peer.close()

    server = await scripted(
        by_connection(answer_one_then_close, serving({p: resp(b) for p, b in files.items()}))
    )
    await fetch(client, server.url + paths[0])
    assert await small(client, server.url, paths, 1) is None
    assert await fetch(client, server.url + paths[1]) == (200, files[paths[1]])
    assert len(server.peers) == 2


async def test_a_body_cut_short_is_an_error_not_a_retry(scripted: Start, client: H1Client) -> None:
    files = bodies(2)
    paths = list(files)

    async def cut(peer: Peer) -> None:
        await peer.request()
        await peer.answer(resp(files[paths[0]]))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await peer.close()

    server = await scripted(cut)
    await fetch(client, server.url + paths[0])
    with pytest.raises(ClosedEarly, match="91 bytes of the body missing"):
        await small(client, server.url, paths, 1)
    assert len(server.peers) == 1
    assert not client.warm(Target(server.url + paths[1]).key)


async def test_an_answer_whose_body_is_not_read_closes_its_connection(
    scripted: Start, client: H1Client
) -> None:
    files = bodies(3)
    paths = list(files)
    server = await scripted(serving({p: resp(b) for p, b in files.items()}))
    await fetch(client, server.url + paths[0])
    url = server.url + paths[1]
    whole = await client.get_small(url, Target(url), {}, ahead_of(server.url, paths, 1), MAX)
    assert whole is not None
    whole.close()  # (as a Response left before its body's end: a local error came first)
    assert not client.warm(Target(url).key)
    assert await fetch(client, server.url + paths[2]) == (200, files[paths[2]])
    assert len(server.peers) == 2


async def test_a_read_timeout_is_raised(scripted: Start, make_client: ClientFactory) -> None:
    client = make_client(read_timeout_s=0.2)
    files = bodies(2)
    paths = list(files)

    async def answer_then_stall(peer: Peer) -> None:
        await peer.request()
        await peer.answer(resp(files[paths[0]]))
        await stall(peer)

    server = await scripted(answer_then_stall)
    await fetch(client, server.url + paths[0])
    with pytest.raises(TimeoutError):
        await small(client, server.url, paths, 1)


async def test_pipelined_answers_in_one_read_are_all_taken(scripted: Start, client: H1Client) -> None:
    files = bodies(12)
    paths = list(files)
    routes: Mapping[str, bytes] = {p: resp(b) for p, b in files.items()}

    async def batch(peer: Peer) -> None:
        # answers held until several requests wait, then written in one go
        first = await peer.request()
        assert first is not None
        await peer.answer(routes[first.path])
        while True:
            await peer.wait_heads(peer.answered + 1)
            waiting = peer.heads[peer.answered :]
            if not waiting:
                return
            peer.answered += len(waiting)
            await peer.send(b"".join(routes[r.path] for r in waiting))

    server = await scripted(batch)
    await fetch(client, server.url + paths[0])
    for i in range(1, len(paths)):
        assert await small(client, server.url, paths, i) == (200, files[paths[i]])
    assert asked(server) == paths
    assert client.small_answers == len(paths) - 1


def test_targets_are_kept_only_for_shared_connections(client: H1Client) -> None:
    url = "http://127.0.0.1:8080/a/b?c"
    first = client.target(url)
    assert client.target(url) is first
    assert (first.key, first.path_qs) == (("127.0.0.1", 8080, 0, ""), "/a/b?c")
    # a job's own partition or a proxy's route: parsed each time, never kept
    assert client.target(url, None, "job-partition") is not client.target(url, None, "job-partition")
    # credentials in a URL are not kept beyond their request
    secret = "http://user:secret@127.0.0.1:8080/a"
    assert client.target(secret).password == "secret"
    assert client.target(secret) is not client.target(secret)
    for i in range(h1.TARGETS_KEPT + 1):
        client.target(f"{url}{i}")
    assert client.target(url) is not first  # (a bounded cache: emptied when full)
