"""Coalesced client replies: one frame per client and block, cut by bytes."""

from __future__ import annotations

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
    frames = [msg[1] for addr, msg in sent]
    assert all(msg[0] == "client_replies" for _, msg in sent)
    assert [reply[0] for frame in frames for reply in frame] == list(range(21))
    for frame in frames[:-1]:
        assert sum(len(r[1][0][1]) for r in frame) <= replies.REPLY_FRAME_BYTES
    assert [r[0] for r in frames[-1]] == [20]  # a single larger reply leaves on its own
    assert len(frames) == 7 + 1  # three replies of 1 MiB and "ok" fit in 4 MiB; then the big one


@pytest.mark.parametrize(
    "results", ["ok", ["ok"] * 3, [], [("ok", b"x" * 10), "ok"], ("ok", "v"), ["ok", b"ok"]]
)
def test_the_fast_size_of_write_results_agrees_with_the_estimate(results: Any) -> None:

    assert replies._results_size(results) == approx_command_size(results)
