"""Coalesced client replies: one frame per client and block, cut by bytes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from waraft.core.log import approx_command_size
from waraft.services import replies


def _casts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    sent: list[tuple[Any, Any]] = []
    monkeypatch.setattr(replies.otp, "cast", lambda addr, msg: sent.append((addr, msg)))
    return sent


def test_small_replies_to_one_client_leave_in_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _casts(monkeypatch)
    with replies.coalesced_replies():
        for batch in range(50):
            replies.send_client_reply(("gw", "c1"), batch, ["ok"], None)
        replies.send_client_reply(("gw", "c2"), 7, ["ok"], None)
    assert [addr for addr, _ in sent] == [("gw", "c1"), ("gw", "c2")]
    assert sent[0][1] == ("client_replies", [(b, ["ok"], None) for b in range(50)])
    assert sent[1][1] == ("client_reply", 7, ["ok"], None)


def test_large_replies_are_cut_into_frames_of_bounded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client reading a 1 MB value in many small batches got all their replies in one frame
    # (up to 1.1 GB in a review), which the frame limit then dropped whole.
    sent = _casts(monkeypatch)
    value = b"v" * (1024 * 1024)
    big = b"w" * (replies.REPLY_FRAME_BYTES + 1)
    with replies.coalesced_replies():
        for batch in range(20):
            replies.send_client_reply(("gw", "c1"), batch, [("ok", value)], None)
        replies.send_client_reply(("gw", "c1"), 20, [("ok", big)], None)
    frames = [msg[1] for addr, msg in sent[:-1]]
    assert all(msg[0] == "client_replies" for _, msg in sent[:-1])
    assert [reply[0] for frame in frames for reply in frame] == list(range(20))
    for frame in frames:
        assert sum(len(r[1][0][1]) for r in frame) <= replies.REPLY_FRAME_BYTES
    assert len(frames) == 7  # three replies of 1 MiB and "ok" fit in 4 MiB
    assert sent[-1][1] == ("client_reply", 20, [("ok", big)], None)  # alone, in a frame of its own


@pytest.mark.parametrize(
    "results", ["ok", ["ok"] * 3, [], [("ok", b"x" * 10), "ok"], ("ok", "v"), ["ok", b"ok"]]
)
def test_the_fast_size_of_write_results_agrees_with_the_estimate(results: Any) -> None:

    assert replies._results_size(results) == approx_command_size(results)


def test_a_batch_larger_than_a_frame_leaves_in_parts_that_cover_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 136 reads of a 1 MiB value in one batch made one 136 MiB reply, dropped at the frame
    # limit: not one of its reads was answered.
    sent = _casts(monkeypatch)
    value = b"v" * (1024 * 1024)
    results = [("ok", value)] * 10 + ["not_found"]
    replies.send_client_reply(("gw", "c1"), 5, results, "n2")
    parts = [msg for _, msg in sent]
    assert len(parts) > 1 and all(p[0] == "client_reply_part" for p in parts)
    assert {(p[1], p[2], p[4], p[6]) for p in parts} == {(5, False, 11, "n2")}
    assert [p[3] for p in parts] == sorted(p[3] for p in parts)
    assert [r for p in parts for r in p[5]] == results
    for part in parts:
        assert sum(approx_command_size(r) for r in part[5]) <= replies.REPLY_FRAME_BYTES


def test_a_packed_result_larger_than_a_frame_is_split_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A packed batch of reads has one result: the list of the answers of its commands.
    sent = _casts(monkeypatch)
    answers = [("ok", b"v" * (1024 * 1024))] * 9
    with replies.coalesced_replies():
        replies.send_client_reply(("gw", "c1"), 6, [answers], None, packed=True)
        replies.send_client_reply(("gw", "c1"), 7, ["ok"], None)
    kinds = [msg[0] for _, msg in sent]
    assert kinds.count("client_reply_part") > 1 and kinds[-1] == "client_reply"
    parts = [msg for _, msg in sent if msg[0] == "client_reply_part"]
    assert all(p[1] == 6 and p[2] is True and p[4] == 9 for p in parts)
    assert [r for p in parts for r in p[5]] == answers


@pytest.mark.parametrize("coalesced", [False, True])
def test_one_request_whose_result_is_a_list_is_answered_with_the_whole_list(
    monkeypatch: pytest.MonkeyPatch, coalesced: bool
) -> None:
    # A provider's own command answering a list longer than a frame had its list cut into
    # parts as if each item answered a command of a packed batch: the client, expecting one
    # answer, dropped every part and the request was never answered.
    sent = _casts(monkeypatch)
    value = [b"v" * (1024 * 1024)] * 6
    with replies.coalesced_replies() if coalesced else contextlib.nullcontext():
        replies.send_client_reply(("gw", "c1"), 8, [value], None)
    assert [msg for _, msg in sent] == [("client_reply", 8, [value], None)]


MIB = 1024 * 1024


@pytest.mark.parametrize("packed", [False, True])
def test_a_result_larger_than_any_frame_is_answered_reply_too_large(
    monkeypatch: pytest.MonkeyPatch, packed: bool
) -> None:
    """A result over the distribution's frame limit left in a frame of its own, which the
    distribution dropped: the client waited for its deadline and took the leader for failed.
    It is answered ``reply_too_large`` now; its frame-mates keep their results."""
    from waraft.distribution.settings import DistSettings

    limit = DistSettings().max_frame_bytes
    monkeypatch.setattr(replies, "_frame_limit", lambda node: limit)
    sent = _casts(monkeypatch)
    big = ("ok", b"x" * (limit + MIB))
    small = ("ok", b"s" * 10)
    if packed:
        replies.send_client_reply(("gw", "c1"), 1, [[small, big]], None, packed=True)
        assert [msg for _, msg in sent] == [
            ("client_reply_part", 1, True, 0, 2, [small, replies.REPLY_TOO_LARGE], None)
        ]
    else:
        replies.send_client_reply(("gw", "c1"), 1, [big], None)
        assert [msg for _, msg in sent] == [("client_reply", 1, [replies.REPLY_TOO_LARGE], None)]


def test_a_result_that_fits_or_stays_in_process_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    big = ("ok", b"x" * (6 * MIB))
    huge = ("ok", b"x" * (17 * MIB))
    monkeypatch.setattr(replies, "_frame_limit", lambda node: 16 * MIB)
    sent = _casts(monkeypatch)
    replies.send_client_reply(("gw", "c1"), 1, [big], None)
    monkeypatch.setattr(replies, "_frame_limit", lambda node: None)  # a client in process
    replies.send_client_reply(("gw", "c1"), 2, [huge], None)
    assert [msg for _, msg in sent] == [
        ("client_reply", 1, [big], None),
        ("client_reply", 2, [huge], None),
    ]
