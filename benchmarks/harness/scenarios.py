"""The five scenarios of issue 6 and what each one runs by default.

Every default can be overridden from the command line (``--nodes``, ``--concurrency``, ...);
``systems`` says which systems a scenario measures: ``pysyncobj`` is PySyncObj driven by a
client outside the cluster exactly like waraft, ``pysyncobj-inleader`` its best case with the
load generated inside the leader's own process (no client at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness.pso_cluster import LATENCY_CONF, THROUGHPUT_CONF

ALL_SYSTEMS = ("waraft", "pysyncobj", "pysyncobj-inleader")

# WARaft's 2 ms commit batching delay exists to gather commits into one append; waraft's
# server already gathers everything queued in its mailbox before it appends and syncs, so the
# benchmarks run without the delay (the defaults stay WARaft's).
WARAFT_TUNED: dict[str, str] = {"raft_commit_batch_interval_ms": "0"}
# Failover is measured with election timeouts like PySyncObj's (0.4-1.4 s; WARaft's default
# is 5-7.5 s) and pre-vote, so that a restarted or partitioned node cannot depose a leader.
WARAFT_FAILOVER: dict[str, str] = {
    **WARAFT_TUNED,
    "raft_election_timeout_ms": "400",
    "raft_election_timeout_ms_max": "1400",
    "raft_heartbeat_interval_ms": "100",
    "raft_election_pre_vote": "true",
}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    what: str
    nodes: int = 3
    concurrency: tuple[int, ...] = (256,)
    #: Load-generator processes (one Python process cannot generate much more than ~200k
    #: commands/s; the pipelined scenarios need two to find either system's ceiling).
    clients: int = 1
    mode: str = "closed"
    coalesce: bool = True
    systems: tuple[str, ...] = ("waraft", "pysyncobj")
    failover: bool = False
    pso_conf: dict[str, Any] = field(default_factory=lambda: dict(THROUGHPUT_CONF))
    #: waraft settings for the scenario (``--settings`` overrides them), as PySyncObj gets its
    #: tuned ``pso_conf``: both sides run the configuration meant for the job.
    waraft_settings: dict[str, str] = field(default_factory=lambda: dict(WARAFT_TUNED))
    #: A failover window must outlast the election timeout (waraft's default is 5-7.5 s).
    min_duration_s: float = 0.0


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "a",
            "maximum throughput, pipelined clients",
            "3 nodes; closed-loop clients keep many commands in flight; the client coalesces "
            "concurrent commands into one frame per leader",
            concurrency=(256, 1024, 4096, 16384),
            clients=2,
            systems=ALL_SYSTEMS,
        ),
        Scenario(
            "b",
            "one command per client request",
            "3 nodes; many concurrent requests, each sent in its own frame (no client-side "
            "coalescing)",
            concurrency=(256,),
            clients=2,
            coalesce=False,
        ),
        Scenario(
            "c",
            "one synchronous client",
            "3 nodes; one client, one blocking commit after the other: the latency of a commit",
            concurrency=(1,),
            mode="sync",
            pso_conf=dict(LATENCY_CONF),
        ),
        Scenario(
            "d",
            "5 nodes, pipelined clients",
            "as (a) on a 5-node cluster",
            nodes=5,
            concurrency=(4096, 16384),
            clients=2,
            systems=ALL_SYSTEMS,
        ),
        Scenario(
            "e",
            "failover",
            "3 nodes under pipelined load; kill -9 of the leader a third into the measured "
            "window; time until writes succeed again",
            concurrency=(256,),
            failover=True,
            min_duration_s=15.0,
            waraft_settings=dict(WARAFT_FAILOVER),
        ),
    )
}


def resolve(names: list[str]) -> list[Scenario]:
    keys: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip().lower()
            if part == "all":
                keys.extend(SCENARIOS)
            elif part in SCENARIOS:
                keys.append(part)
            elif part:
                raise ValueError(f"unknown scenario {part!r} (choose from a-e or all)")
    return [SCENARIOS[k] for k in dict.fromkeys(keys)]
