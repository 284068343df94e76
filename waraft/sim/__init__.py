"""``waraft.sim``: a deterministic simulator for ``waraft.core`` clusters.

Run N Raft cores over a virtual network (seeded delay, loss, duplication, reordering, symmetric
and asymmetric partitions) and a virtual clock; crash and restart nodes with exactly what they
persisted; drive clients that commit and read; check Raft's safety invariants after every step
and the client history for linearizability. Test your own state machine by passing a
``StateMachine`` factory (and a ``Model`` for the linearizability checker)::

    from waraft.sim import Simulation, NetConfig

    sim = Simulation(nodes=3, seed=42, net=NetConfig.unreliable())
    sim.bootstrap()                       # every node at LogPos(1, 1) with the full config
    leader = sim.await_leader()
    call = sim.submit(leader, ("write", "t", "k", 1))
    sim.run_until(lambda: call.done)
    sim.add_clients(3)                    # random KV commits and strong reads
    sim.crash("n2"); sim.run_for(2000); sim.restart("n2")
    sim.partition(["n1"], ["n2", "n3"]); sim.run_for(3000); sim.heal()
    sim.stop_clients(); sim.run_until(sim.clients_idle)
    assert sim.check_linearizable().ok

A broken invariant raises ``InvariantViolation`` with the seed, the step and a trace.
``python -m waraft.sim.sweep`` runs randomized scenarios over many seeds.
"""

from waraft.sim.client import ClientConfig, KVWorkload, Workload
from waraft.sim.clock import VirtualClock
from waraft.sim.history import History, Operation, Status
from waraft.sim.invariants import InvariantChecker, InvariantViolation
from waraft.sim.linearizability import KVModel, LinearizabilityResult, Model, check_history
from waraft.sim.log import MemoryLog
from waraft.sim.machine import KVStateMachine, StateMachine
from waraft.sim.nemesis import Nemesis, NemesisConfig, Scenario, random_scenario
from waraft.sim.network import NetConfig, Network
from waraft.sim.simulation import Call, SimConfig, Simulation, fast_settings, make_config
from waraft.sim.storage import SimStorage, Snapshot

__all__ = [
    "Call",
    "ClientConfig",
    "History",
    "InvariantChecker",
    "InvariantViolation",
    "KVModel",
    "KVStateMachine",
    "KVWorkload",
    "LinearizabilityResult",
    "MemoryLog",
    "Model",
    "Nemesis",
    "NemesisConfig",
    "NetConfig",
    "Network",
    "Operation",
    "Scenario",
    "SimConfig",
    "SimStorage",
    "Simulation",
    "Snapshot",
    "StateMachine",
    "Status",
    "VirtualClock",
    "Workload",
    "check_history",
    "fast_settings",
    "make_config",
    "random_scenario",
]
