"""What the shell's ``promote`` says it did: a review's forced promote of a replica that was
behind answered a bare ``ok`` while the up-to-date replicas disabled themselves."""

from __future__ import annotations

from waraft.cli.shell import promote_note


def test_a_forced_promote_warns_that_it_can_lose_data() -> None:
    note = promote_note("ok", force=True)
    assert "without votes" in note and "lost" in note


def test_a_promote_says_whether_it_won_its_election() -> None:
    assert "won an election" in promote_note("ok", force=False)
    lost = promote_note(("error", "election_lost"), force=False)
    assert lost.startswith("promote: not leader:") and "log is behind" in lost
    assert "handover" in promote_note(("error", "rejected"), force=False)
    assert promote_note(("error", "not_a_member"), False) == "promote: not leader: not_a_member"
