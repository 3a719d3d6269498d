"""The pure parts of `openbits watch`'s live table (cli/render.py)."""

from __future__ import annotations

from openbits.cli.render import Rates, bytes_pair, duration, short_ids
from openbits.model import JobState

MiB = 1024 * 1024


def test_short_ids_are_unique_prefixes_as_git_shortens_hashes() -> None:
    a, b, c = (
        "{AA277882-E135-40FA-8160-645F3DAB0EE7}",
        "{AA277882-E1FF-40FA-8160-645F3DAB0EE7}",
        "{12345678-0000-4000-8000-000000000000}",
    )
    assert short_ids([c]) == {c: "12345678"}
    assert short_ids([a, b, c]) == {a: "AA277882-E13", b: "AA277882-E1F", c: "12345678-000"}
    assert short_ids([a, "{AA277882-0000-4000-8000-000000000000}"])[a] == "AA277882-E"  # never ends at '-'


def test_bytes_pair_and_duration() -> None:
    assert bytes_pair(3 * MiB + MiB // 2, 16 * MiB) == "3.5/16.0 MiB"
    assert bytes_pair(512, 1000) == "512/1000 B"
    assert bytes_pair(0, 0) == "-" and bytes_pair(2048, 0xFFFFFFFFFFFFFFFF) == "2.0 KiB"
    assert [duration(s) for s in (4.6, 185, 7620, 3 * 86400 + 4 * 3600)] == ["5s", "3m05s", "2h07m", "3d04h"]


def test_rates_follow_the_changes_of_a_transferring_job() -> None:
    rates = Rates()
    job = {"State": JobState.TRANSFERRING, "BytesTransferred": 0, "BytesTotal": 10 * MiB}
    rates.update({"j": job}, now=100.0)
    assert rates.cells("j", job) == ("-", "-")  # one sample: no rate yet
    job = dict(job, BytesTransferred=MiB)
    rates.update({"j": job}, now=101.0)
    assert rates.cells("j", job) == ("1.0 MiB/s", "9s")
    job = dict(job, BytesTransferred=3 * MiB)
    rates.update({"j": job}, now=102.0)  # 2 MiB/s now, smoothed: 1.3 MiB/s
    assert rates.cells("j", job)[0] == "1.3 MiB/s"
    suspended = dict(job, State=JobState.SUSPENDED)
    rates.update({"j": suspended}, now=103.0)
    assert rates.cells("j", suspended) == ("-", "-")
    rates.update({}, now=104.0)
    assert rates.rate("j") is None
