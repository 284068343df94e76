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

The API, by concern:

* **Building** — ``Simulation(SimConfig(...))`` or ``Simulation(**fields)``: ``nodes`` (a
  count or names), ``seed``, ``settings`` (``waraft.core.settings.Settings``; default
  ``fast_settings()``), ``node_settings`` (per node), ``net`` (``NetConfig``), ``machine`` (a
  ``StateMachine`` factory; default ``KVStateMachine``), ``durable_log`` / ``durable_storage``
  (``False``: a restarted node comes back stalled and needs a snapshot), ``apply_delay_ms`` /
  ``apply_batch`` (how storage drains its apply queue), ``batch_effects`` (run the effects
  contract's persistence-first licence over same-millisecond events), ``trim_probability`` /
  ``strip_on_trim``, snapshot timings, ``label_fn``, ``core_factory``.
* **Running** — ``step()``, ``run_for(ms)``, ``run_until(predicate, timeout_ms)``,
  ``run_steps(n)``; ``await_leader()``; ``trace_hook`` receives a line per step.
* **Faults** — ``crash`` / ``restart``; ``partition(*groups)``, ``isolate``, ``block(src, dst)``
  (one way), ``heal``; 6.824-style ``disconnect`` / ``connect``; ``set_net(NetConfig)``;
  ``slow_storage[node] = (lo, hi)``; ``nodes[n].log.refuse_append`` (the log says "would
  block"); ``Nemesis`` schedules random faults.
* **Operating** — ``bootstrap(members, witnesses, learners, position, data)``,
  ``submit`` / ``read`` (through a node's acceptor; ``record=True`` adds them to the history),
  ``adjust_config``, ``handover``, ``resign``, ``trigger_election``, ``promote``, ``disable``,
  ``enable``, or any event with ``call`` / ``call_sync``.
* **Observing** — ``leader()``, ``leaders()``, ``state(n)``, ``term(n)``, ``nodes[n]`` (its
  ``core``, ``log``, ``storage``, ``durable``), ``network`` counters, ``stats``,
  ``invariants.committed`` / ``applied``, ``catchup``.
* **Clients and histories** — ``add_clients(k, workload, ClientConfig)``, ``stop_clients``,
  ``clients_idle``; ``history`` (``Operation``: invoke/complete times, ``ok`` / ``fail`` /
  ``unknown``); ``check_linearizable(model)`` (``KVModel`` by default; bring a ``Model`` for
  your own machine).
* **Sweeps** — ``random_scenario(seed)`` and ``python -m waraft.sim.sweep --seeds N
  [--steps S] [--start K] [--jobs J] | --replay SEED``.
"""

from waraft.sim.client import AppendWorkload, ClientConfig, KVWorkload, MixedWorkload, Workload
from waraft.sim.clock import VirtualClock
from waraft.sim.history import History, Operation, Status
from waraft.sim.invariants import InvariantChecker, InvariantViolation
from waraft.sim.linearizability import (
    KVModel,
    LinearizabilityResult,
    ListAppendModel,
    Model,
    check_history,
    check_list_append,
)
from waraft.sim.log import MemoryLog
from waraft.sim.machine import KVStateMachine, StateMachine
from waraft.sim.nemesis import Nemesis, NemesisConfig, Scenario, random_scenario
from waraft.sim.network import NetConfig, Network
from waraft.sim.simulation import Call, SimConfig, Simulation, fast_settings, make_config
from waraft.sim.storage import SimStorage, Snapshot

__all__ = [
    "AppendWorkload",
    "Call",
    "ClientConfig",
    "History",
    "InvariantChecker",
    "InvariantViolation",
    "KVModel",
    "KVStateMachine",
    "KVWorkload",
    "LinearizabilityResult",
    "ListAppendModel",
    "MemoryLog",
    "MixedWorkload",
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
    "check_list_append",
    "fast_settings",
    "make_config",
    "random_scenario",
]
