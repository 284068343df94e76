"""Recovering a lost term and vote (a replica whose durable state file was deleted).

A replica persists its term and vote before any entry of that term reaches its log or storage
(Fig. 2; bootstrap stores its term before its data lands too), so one that holds an entry
under a lower durable term, or none (its state file is gone), has lost its term and vote
(the shell starts such a replica ``disabled``, ``durable_state_missing``; an ``enable``
leaves it at term 0). It may have voted, or stood as a candidate, in any term up to
the highest one in the cluster when it lost them, and does not know which: voting again in
such a term could elect two leaders in it, and acknowledging entries under a term older than
one it promised could let a deposed leader commit over a newer leader's entries.

So until it knows a term past every one it could have voted in, it takes no part (``term_lost``):
it stays ``stalled``, grants no vote, starts no election and acknowledges nothing; the RPCs it
receives are read for their senders' terms only. It asks each voter of its config for its term
(a pre-vote request, which a voter answers with its term, as a ``pre_vote`` or a
``notify_term``, without changing it), again at every election timeout until all have answered.
A term a candidate asked for its vote in is durable on that candidate and only grows, so the
highest term the voters answer, ``M``, is at least any term it could have voted in. It then
moves to ``M`` counted as having voted (for itself, so it grants no other vote in ``M``) and
goes on as after a restart: follower, witness, or a single member's candidate.

A voter that never answers (down for good, disabled) keeps it out; then, as WARaft does for a
replica that lost its state, an operator replaces it (an empty replica takes the leader's
snapshot). A candidate removed from the config since it asked is not asked (its term is not
needed once the config that made it a voter is gone from every log the replica can join).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import terms
from waraft.core.rpc import PreVote, RaftRpc, RequestPreVote
from waraft.core.types import State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def heard(core: Replica, rpc: RaftRpc) -> None:
    """An RPC reached a replica that lost its term (the dispatcher sends every one here
    instead of ``terms.handle_rpc``): note its sender's term, nothing else. Disabled, it
    drops them: adopting a term there would persist it, and after a restart the lost term
    could no longer be told from the log's."""
    if core.state is State.DISABLED:
        return
    node = rpc.sender.node
    if node != core.node and rpc.term > core.terms_heard.get(node, -1):
        core.terms_heard[node] = rpc.term
    if _is_recovery_question(rpc) and node in _voters(core) and _is_voter(core):
        # Another voter recovering at the same time asks us: it waits for our answer, and
        # we may not wait for its question any more (we heard it before). Three of them can
        # so wait on each other in a ring for good (n1 on n2, n2 on n4, n4 on n1: each asks
        # only the one it lacks, which asks only another). Our floor is the answer our own
        # question would give it (``_floor``); a pre-vote reply, which nobody answers, so
        # two recovering voters cannot ping-pong.
        core.send(rpc.sender, PreVote(0), term=_floor(core))
    _recovered(core)


def _is_recovery_question(rpc: RaftRpc) -> bool:
    """Whether ``rpc`` is a recovering replica's question (``ask``): a pre-vote request of
    ref 0, which no candidate's pre-vote carries."""
    payload = rpc.payload
    return type(payload) is RequestPreVote and payload.ref == 0


def _is_voter(core: Replica) -> bool:
    return any(member.node == core.node for member in core.current_config().membership)


def ask(core: Replica) -> None:
    """Ask the voters not heard from yet for their terms, and again after an election
    timeout (unless every voter has been heard from: then recover now)."""
    if _recovered(core):
        return
    missing = unheard(core)
    core.log_notice("lost its term and vote: asking %s for their terms", sorted(missing))
    core.count("stalled.term_lost")
    members = core.current_config().membership
    # A voter asks at the term its own log ends in, which is its answer to another voter
    # recovering at the same time (see ``_floor``). A learner is nobody's voter, and asks
    # below everyone's term so that voters answer a non-member (``terms.handle_rpc``).
    term = _floor(core) if _is_voter(core) else core.current_term
    for member in members:
        if member.node in missing:
            core.send(member, RequestPreVote(0), term=term)
    core.election_timeout()


def _floor(core: Replica) -> int:
    """The highest term a replica that lost its term knows it took part in: its log's last.

    It is what such a voter tells another one recovering at the same time (its question's
    term), and enough for that one: a term the other voted in for it was a candidacy that
    died with the lost state, or a leadership whose entries it holds (a leader's entries are
    in its log before any follower counts them); an entry of that term it does not hold
    reached only followers, which know the term and answer it themselves. Its question's
    own term (0 once re-enabled) would be taken for its term: seen so, the other went on
    below a term it had voted in and could vote in it again (two leaders in a term).
    """
    return max(core.last_log_pos().term, core.current_term)


def _voters(core: Replica) -> set[str]:
    return {member.node for member in core.current_config().membership} - {core.node}


def unheard(core: Replica) -> set[str]:
    """The voters a replica recovering its term has not heard from yet."""
    return _voters(core) - core.terms_heard.keys()


def _recovered(core: Replica) -> bool:
    """Once every voter answered: take up the highest term, voted, and leave ``stalled``."""
    voters = _voters(core)
    if not voters <= core.terms_heard.keys():
        return False
    floor = max([_floor(core), *(core.terms_heard[n] for n in voters)])
    core.term_lost = False
    core.terms_heard = {}
    core.log_notice("recovered its lost term: %d, counted as voted in it", floor)
    if floor > core.current_term:
        terms.advance_term(core, floor, core.node)
    elif core.voted_for is None:
        core.voted_for = core.node
        terms.persist(core)
    core.goto(core.state_with_data() if core.holds_data() else State.STALLED)
    return True
