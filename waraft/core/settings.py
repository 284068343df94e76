"""Every per-partition setting the protocol core reads, under WARaft's names and defaults.

``waraft.env`` resolves these from the application's configuration (search apps, fallback keys,
table overrides, digest §7.5) and hands the core a ``Settings``; the server shell may swap in a
fresh ``Settings`` at any time, because WARaft reads its settings live on every use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

ELECTION_MAX_WEIGHT = 10

DEFAULT_MAX_READS_PER_BATCH = 1000
"""``raft_max_reads_per_batch``'s default: what ``waraft.client`` packs into one read."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Table-scoped and app-scoped knobs of digest §7.6 that the core needs."""

    # app-scoped
    raft_leader_eligible: bool = True
    raft_election_weight: int = ELECTION_MAX_WEIGHT
    # table-scoped
    raft_max_pending_applies: int = 1000
    raft_max_pending_apply_bytes: int = 32_000_000
    raft_max_pending_high_priority_commits: int = 1500
    raft_max_pending_low_priority_commits: int = 250
    raft_max_pending_reads: int = 5000
    # Not a WARaft knob (issue 14): estimated bytes of commands admitted and not yet handed to
    # storage or cancelled, both priorities together; beyond it commits are refused with
    # ``commit_queue_bytes_full`` (a client retries it like ``commit_queue_full``). 0 = unbounded.
    raft_max_pending_commit_bytes: int = 16 * 1024 * 1024
    # Not a WARaft knob (review E, M3): estimated bytes of the commands of strong reads
    # admitted and not yet answered (held by the leader or queued for storage); beyond it
    # reads are refused with ``read_queue_bytes_full``. 0 = unbounded.
    raft_max_pending_read_bytes: int = 16 * 1024 * 1024
    # Not a WARaft knob (issue 14): estimated bytes of results storage builds for the strong
    # reads it answers at once (the reads queued behind one position); the reads past it are
    # answered ``read_queue_bytes_full`` (retried by the client like ``read_queue_full``), so
    # reads are bounded by the bytes they return, not only by their count. 0 = unbounded.
    raft_max_read_reply_bytes: int = 64 * 1024 * 1024
    # Not a WARaft knob (review N, 2): reads one read command may hold (a ``$batch`` of
    # reads); a longer one is refused with ``("error", ("badarg", ...))``. Storage serves a
    # batch in one turn, at one position: this bounds that turn (and each turn of storage
    # serves about this many reads, whatever queued them).
    raft_max_reads_per_batch: int = DEFAULT_MAX_READS_PER_BATCH
    raft_election_pre_vote: bool = False
    raft_leader_check_quorum: bool = False
    raft_leader_read_lease_ms: int = 0
    raft_max_heartbeat_age_msecs: int = 180_000
    raft_heartbeat_interval_ms: int = 120
    raft_max_log_entries_per_heartbeat: int = 15
    raft_max_heartbeat_size: int = 1024 * 1024
    raft_commit_batch_interval_ms: int = 2
    raft_commit_batch_max: int = 15
    raft_max_retained_entries: int = 1_500_000
    raft_apply_log_batch_size: int = 200
    raft_apply_batch_max_bytes: int = 200 * 4 * 1024
    raft_election_timeout_ms: int = 5000
    raft_election_timeout_ms_max: int = 7500
    raft_candidate_buffer_requests: bool = False
    raft_liveness_grace_period_ms: int = 30_000
    raft_stale_grace_period_entries: int = 5000
    raft_promotion_grace_period_secs: int = 60
    raft_max_handover_log_entries: int = 200
    raft_handover_max_unapplied_entries: int | None = None  # None means "same as the above"
    raft_max_handover_log_size: int = 50 * 1024 * 1024
    raft_handover_timeout_ms: int = 600
    raft_max_log_records_per_file: int = 200_000
    raft_max_log_records: int | None = None  # None means raft_max_log_records_per_file * 10
    # Not WARaft knobs (issue 14), byte bounds on the log. ``raft_max_retained_bytes``: bytes
    # of applied entries a replica keeps (the in-memory and WAL providers count memory: encoded
    # size plus ~450 per entry; the disk log counts disk); beyond it rotation trims (to 3/4),
    # even below a lagging follower's match index, as ``raft_max_retained_entries`` does (that
    # follower then gets a snapshot). 0 = no byte bound. ``raft_max_log_bytes_per_file``: the
    # size at which the disk log starts a new segment and the node's WAL a new file.
    raft_max_retained_bytes: int = 8 * 1024 * 1024
    # Not a WARaft knob (issue 14): bytes of log entries ALL the partitions of a node may keep
    # together (the in-memory and WAL providers count memory, as above). Each partition may
    # keep the larger of an equal share (this / partitions open) and what the others leave
    # unused, and never more than ``raft_max_retained_bytes``; past it rotation trims as above,
    # so a node's retained log does not grow with its partition count. 64 MiB: an eighth of
    # the 512 MiB per node the issue targets (the rest is the interpreter, queues, LMDB's map
    # and allocator slack); at 64 partitions 1 MiB each, about 700 entries of 1 kB, far more
    # than a healthy follower lags. 0 = no node-wide bound.
    raft_node_max_retained_bytes: int = 64 * 1024 * 1024
    raft_max_log_bytes_per_file: int = 64 * 1024 * 1024
    # Not a WARaft knob (issue 14): how far ahead of its records the node's WAL fills its
    # active file with zeros, so that a group commit's fdatasync overwrites blocks that exist
    # and commits no new file size (about a third less fsync time, ``benchmarks/SCALE.md``).
    # Node-wide: the first partition to open the WAL sets it. 0 = append (a copy-on-write
    # filesystem gains nothing from the zeros).
    raft_wal_preallocate_bytes: int = 1024 * 1024
    raft_rotate_by_trim_index: bool = False
    raft_log_heartbeat_binary_entries: bool = False
    raft_snapshot_catchup_threshold: int = 100_000
    raft_storage_notify_complete: bool = True
    raft_storage_notify_complete_buffer: int = 100
    # Not a WARaft knob: unacknowledged append_entries per peer while a leader drains a
    # replication backlog on responses (WARaft drains it only at batch or heartbeat pace;
    # 0 restores that pacing).
    raft_max_inflight_appends: int = 8
    # Not a WARaft knob (issue 12): commits that arrive while a round is on its way to a live
    # follower wait for its answer and go out together in the round that answer starts,
    # instead of a round (after the 2 ms batch interval) each. At 1000 partitions x 16 commands
    # in flight each, a partition got ~1 command per round. False restores WARaft's pacing.
    raft_commit_await_round: bool = False
    # Not a WARaft knob (issue 14): estimated bytes of entries sent to one peer and not yet
    # acknowledged. Past it the leader sends that peer only empty append_entries (heartbeats
    # that keep its leadership and carry the commit index) until acknowledgements come back,
    # so a slow or dead follower costs at most this much buffered per peer. 0 = unbounded.
    raft_max_bytes_in_flight: int = 4 * 1024 * 1024
    # Not a WARaft knob (issue 13): a leader whose followers acknowledged everything and that
    # saw no traffic for this long sends one quiesce round and then stops heartbeating; its
    # followers stop their election timers while node-level liveness reports the leader's
    # node up (``NodeLiveness`` events). 0 (the default) never quiesces: only enable it where
    # the runner delivers node liveness, or a dead quiescent leader is never replaced.
    raft_quiesce_after_ms: int = 0
    # Not a WARaft knob (F3): the client gateway stamps each session register with its
    # sender's authenticated identity, the session's owner (``waraft.core.sessions``). Replicas
    # of builds before owners answer an owned register as an unknown command while newer ones
    # open the session, so a rolling upgrade from such a build runs with False (registers
    # appended unowned, as those builds did) until every replica runs this one.
    raft_session_owners: bool = True

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every setting's name."""
        return frozenset(f.name for f in fields(cls))

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some settings changed; unknown names raise ``TypeError``."""
        unknown = set(overrides) - self.names()
        if unknown:
            raise TypeError(f"unknown raft settings: {sorted(unknown)}")
        return replace(self, **overrides)

    @property
    def handover_max_unapplied_entries(self) -> int:
        """The handover readiness bound on unapplied entries (WARaft falls back to 200)."""
        value = self.raft_handover_max_unapplied_entries
        return self.raft_max_handover_log_entries if value is None else value

    @property
    def log_rotation_keep(self) -> int:
        """How many entries rotation keeps behind the rotate index."""
        keep = self.raft_max_log_records
        return self.raft_max_log_records_per_file * 10 if keep is None else keep
