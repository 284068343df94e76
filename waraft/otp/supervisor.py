"""OTP supervisors.

Semantics follow Erlang/OTP's ``supervisor`` module:

* Child specs are dicts: ``id``, ``start = (callable, args)`` (the callable returns a linked
  :class:`Pid`, or None for ``ignore``, or raises; ``("ok", pid)``/``("error", r)``/
  ``"ignore"`` are accepted too), ``restart`` permanent | transient | temporary (default
  permanent), ``shutdown`` ms | "brutal_kill" | "infinity" (default 5000 for workers,
  "infinity" for supervisors), ``type`` worker | supervisor, ``modules``.
* Flags: ``strategy`` one_for_one | one_for_all | rest_for_one | simple_one_for_one,
  ``intensity`` (default 1), ``period`` seconds (default 5).
* Start: children start one at a time in list order, each ``init`` finishing before the next
  starts; if one fails, those already started are stopped (reverse order) and the start fails
  with ``StartError(("shutdown", ("failed_to_start_child", id, reason)))``. A child returning
  ``ignore`` is kept with no pid (a temporary one is dropped).
* Exits: permanent children always restart; transient ones only after an abnormal exit (after a
  normal one the spec stays, with no pid); temporary ones never, their spec is removed.
  one_for_all stops the others (reverse start order) and restarts all in start order;
  rest_for_one does so for the children started after the failed one; a group restart counts
  as one restart. A restart whose start fails is retried through the mailbox (each retry
  counts). More than ``intensity`` restarts within ``period`` seconds: the supervisor stops
  all children and exits ``shutdown``, and its own supervisor applies its policy (escalation).
  Its ``gave_up`` is then True, so that a subclass's ``terminate`` can tell this exit from
  one its own supervisor ordered (both have the reason ``shutdown``).
* Stopping a child: unlink, exit signal ``shutdown``, wait up to ``shutdown`` ms, then
  ``kill``. ``brutal_kill`` kills at once, ``infinity`` waits forever. The supervisor stops its
  children in reverse start order (simple_one_for_one: all at once) when it terminates.
* Python cannot kill a thread: a child still running after its shutdown timeout is killed the
  only way we can -- it is *abandoned*: marked dead with reason ``killed`` (its name is
  released, links and monitors are told, waiting callers fail), an error is logged, and the
  supervisor moves on. Its thread finishes whatever handler it is stuck in and then ends
  without handling another message; if it never returns, the daemon thread stays stuck.

Every API function takes a pid, a registered name or ``(name, node_id)``; the name
``"kernel_sup"`` starts the node's root supervisor on first use.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from waraft.otp import process
from waraft.otp.errors import KILL, KILLED, SHUTDOWN, StartError, error_reason, is_normal_exit
from waraft.otp.node import Node
from waraft.otp.pid import Pid
from waraft.otp.process import Process, Target
from waraft.otp.reply import ReplyTo

logger = logging.getLogger(__name__)

ONE_FOR_ONE: Final = "one_for_one"
ONE_FOR_ALL: Final = "one_for_all"
REST_FOR_ONE: Final = "rest_for_one"
SIMPLE_ONE_FOR_ONE: Final = "simple_one_for_one"
_STRATEGIES: Final = frozenset({ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE, SIMPLE_ONE_FOR_ONE})
_RESTARTS: Final = frozenset({"permanent", "transient", "temporary"})
_TYPES: Final = frozenset({"worker", "supervisor"})
_DEFAULT_FLAGS: Final[dict[str, Any]] = {"strategy": ONE_FOR_ONE, "intensity": 1, "period": 5}

Spec = dict[str, Any]
Flags = dict[str, Any]
InitFn = Callable[..., tuple[Flags, list[Spec]]]
StartResult = tuple[str, Any]


class _Restarting:
    """Pid slot of a child whose restart failed and will be retried (``{restarting, Pid}``)."""

    __slots__ = ("old",)

    def __init__(self, old: Pid | None) -> None:
        self.old = old

    def __repr__(self) -> str:
        return "restarting"


@dataclass(slots=True, eq=False)
class _Child:
    id: Any
    func: Callable[..., Any]
    args: tuple[Any, ...]
    restart: str
    shutdown: int | str
    type: str
    modules: Any
    pid: Pid | _Restarting | None = None

    def to_spec(self) -> Spec:
        return {
            "id": self.id,
            "start": (self.func, self.args),
            "restart": self.restart,
            "shutdown": self.shutdown,
            "type": self.type,
            "modules": self.modules,
        }


class _BadSpec(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------- validation
def _check_flags(flags: Flags) -> Flags:
    if not isinstance(flags, dict):
        raise _BadSpec(("invalid_type", flags))
    merged = {**_DEFAULT_FLAGS, **flags}
    if merged["strategy"] not in _STRATEGIES:
        raise _BadSpec(("invalid_strategy", merged["strategy"]))
    intensity = merged["intensity"]
    if not isinstance(intensity, int) or isinstance(intensity, bool) or intensity < 0:
        raise _BadSpec(("invalid_intensity", intensity))
    period = merged["period"]
    if not isinstance(period, int | float) or isinstance(period, bool) or period <= 0:
        raise _BadSpec(("invalid_period", period))
    return merged


def _default_modules(func: Callable[..., Any]) -> list[Any]:
    owner = getattr(func, "__self__", None)
    return [owner if isinstance(owner, type) else func]


def _check_spec(spec: Spec) -> _Child:
    if not isinstance(spec, dict):
        raise _BadSpec(("invalid_child_spec", spec))
    if "id" not in spec:
        raise _BadSpec(("missing_id", spec))
    if "start" not in spec:
        raise _BadSpec(("missing_start", spec))
    start = spec["start"]
    if not (isinstance(start, tuple | list) and len(start) == 2 and callable(start[0])):
        raise _BadSpec(("invalid_mfa", start))
    func, args = start
    if not isinstance(args, tuple | list):
        raise _BadSpec(("invalid_mfa", start))
    restart = spec.get("restart", "permanent")
    if restart not in _RESTARTS:
        raise _BadSpec(("invalid_restart_type", restart))
    child_type = spec.get("type", "worker")
    if child_type not in _TYPES:
        raise _BadSpec(("invalid_child_type", child_type))
    shutdown = spec.get("shutdown", 5000 if child_type == "worker" else "infinity")
    valid_ms = isinstance(shutdown, int) and not isinstance(shutdown, bool) and shutdown >= 0
    if not valid_ms and shutdown not in ("brutal_kill", "infinity"):
        raise _BadSpec(("invalid_shutdown", shutdown))
    modules = spec.get("modules", _default_modules(func))
    return _Child(spec["id"], func, tuple(args), restart, shutdown, child_type, modules)


def check_childspecs(specs: list[Spec]) -> str | tuple[str, Any]:
    """``"ok"`` if every spec is valid and ids are unique, else ``("error", reason)``."""
    try:
        _check_specs(specs)
    except _BadSpec as exc:
        return ("error", exc.reason)
    return "ok"


def _check_specs(specs: list[Spec]) -> list[_Child]:
    if not isinstance(specs, list):
        raise _BadSpec(("invalid_child_specs", specs))
    children: list[_Child] = []
    seen: set[Any] = set()
    for spec in specs:
        child = _check_spec(spec)
        if child.id in seen:
            raise _BadSpec(("duplicate_child_name", child.id))
        seen.add(child.id)
        children.append(child)
    return children


def _start_result(func: Callable[..., Any], args: tuple[Any, ...]) -> StartResult:
    """Run a child start function; normalise to ``("ok", pid | None)`` / ``("error", r)``."""
    try:
        result = func(*args)
    except StartError as exc:
        return ("error", exc.reason)
    except Exception as exc:
        logger.debug("child start function raised", exc_info=exc)
        return ("error", error_reason(exc))
    if type(result) is Pid:
        return ("ok", result)
    if result is None or result == "ignore":
        return ("ok", None)
    if isinstance(result, tuple) and len(result) >= 2:
        if result[0] == "ok" and type(result[1]) is Pid:
            return ("ok", result[1])
        if result[0] == "error":
            return ("error", result[1])
    return ("error", ("bad_return_value", result))


# ---------------------------------------------------------------------- the actor
class Supervisor(Process):
    """The supervisor process; use :func:`start_link` rather than this class directly."""

    trap_exit = True

    gave_up: bool = False
    """True once the supervisor reached its maximum restart intensity and is stopping (its
    own supervisor then applies its policy); False while it runs and when it stops for
    any other reason (its supervisor's order, a node stop)."""

    def init(self, *args: Any) -> None:
        init_fn, init_args = args
        self._label: str = repr(self.pid)
        result = init_fn(*init_args)
        try:
            flags, specs = result
        except (TypeError, ValueError):
            raise StartError(("bad_return", result)) from None
        try:
            merged = _check_flags(flags)
        except _BadSpec as exc:
            raise StartError(("supervisor_data", exc.reason)) from None
        self._strategy: str = merged["strategy"]
        self._intensity: int = merged["intensity"]
        self._period: float = float(merged["period"])
        self._restarts: deque[float] = deque()
        self._ids: list[Any] = []
        self._children: dict[Any, _Child] = {}
        self._dyn: dict[Pid | _Restarting, tuple[Any, ...]] = {}
        self._dyn_restarting = 0
        if self.pid.name is not None:
            self._label = f"{self.pid.name} {self.pid!r}"
        try:
            children = _check_specs(specs)
        except _BadSpec as exc:
            raise StartError(("start_spec", exc.reason)) from None
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            if len(children) != 1:
                raise StartError(("bad_start_spec", specs))
            self._template = children[0]
            return
        self._start_initial(children)

    def _start_initial(self, children: list[_Child]) -> None:
        for child in children:
            status, value = self._start(child)
            if status == "error":
                logger.error("%s: child %r failed to start: %r", self._label, child.id, value)
                self._terminate_all()
                raise StartError((SHUTDOWN, ("failed_to_start_child", child.id, value)))
            if value is None and child.restart == "temporary":
                continue
            child.pid = value
            self._ids.append(child.id)
            self._children[child.id] = child

    def _start(self, child: _Child, args: tuple[Any, ...] | None = None) -> StartResult:
        # Scheduled placement: a child supervisor's subtree goes to the next scheduler, a
        # worker shares its supervisor's (so a partition's workers call each other in-thread).
        self._spread_children = child.type == "supervisor"
        try:
            status, value = _start_result(child.func, child.args if args is None else args)
        finally:
            self._spread_children = False
        if status == "ok" and value is not None:
            self._ensure_linked(value)
            logger.debug("%s: started child %r as %r", self._label, child.id, value)
        return (status, value)

    def _ensure_linked(self, pid: Pid) -> None:
        # A start function should link (start_link); link anyway so the child is supervised.
        if pid not in self.pid._links:
            process.link(pid)

    # ------------------------------------------------------------------ API
    def handle_call(self, request: Any, from_: ReplyTo) -> Any:
        if request == "which_children":
            return self._which_children()
        if request == "count_children":
            return self._count_children()
        op, arg = request
        simple = self._strategy == SIMPLE_ONE_FOR_ONE
        if op == "start_child":
            return self._start_dynamic(arg) if simple else self._start_static(arg)
        if op == "terminate_child":
            return self._terminate_child(arg)
        if op == "get_childspec":
            return self._get_childspec(arg)
        if simple:
            return ("error", SIMPLE_ONE_FOR_ONE)
        if op == "restart_child":
            return self._restart_child_by_id(arg)
        if op == "delete_child":
            return self._delete_child(arg)
        raise ValueError(f"unknown supervisor request {request!r}")

    def _start_static(self, spec: Spec) -> StartResult:
        try:
            child = _check_spec(spec)
        except _BadSpec as exc:
            return ("error", exc.reason)
        existing = self._children.get(child.id)
        if existing is not None:
            if type(existing.pid) is Pid:
                return ("error", ("already_started", existing.pid))
            return ("error", "already_present")
        status, value = self._start(child)
        if status == "error":
            return (status, value)
        if value is None and child.restart == "temporary":
            return ("ok", None)
        child.pid = value
        self._ids.append(child.id)
        self._children[child.id] = child
        return ("ok", value)

    def _start_dynamic(self, extra: Any) -> StartResult:
        template = self._template
        args = template.args + tuple(extra)
        status, value = self._start(template, args)
        if status == "ok" and value is not None:
            self._dyn[value] = args
        return (status, value)

    def _terminate_child(self, key: Any) -> str | StartResult:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            if type(key) is not Pid:
                return ("error", SIMPLE_ONE_FOR_ONE)
            found = self._dynamic_key(key)
            if found is not None:
                self._stop_dynamic_child(found)
                return "ok"
            return "ok" if not key.is_alive() else ("error", "not_found")
        child = self._children.get(key)
        if child is None:
            return ("error", "not_found")
        if type(child.pid) is Pid:
            self._shutdown(child, child.pid)
        self._del_child(child)
        return "ok"

    def _dynamic_key(self, pid: Pid) -> Pid | _Restarting | None:
        """simple_one_for_one: the key of the child that is ``pid``, or that was ``pid``
        before a restart that failed and waits in the mailbox to be tried again (OTP's
        ``{restarting, Pid}``); None if neither."""
        if pid in self._dyn:
            return pid
        for key in self._dyn:
            if type(key) is _Restarting and key.old is pid:
                return key
        return None

    def _dynamic_children(self) -> list[tuple[Pid | _Restarting, tuple[Any, ...]]]:
        """simple_one_for_one: each child's key (its pid, or the marker of a restart to be
        tried again) with its start arguments, for a subclass that finds children by them."""
        return list(self._dyn.items())

    def _stop_dynamic_child(self, key: Pid | _Restarting) -> None:
        """simple_one_for_one: stop the child (if it runs) and forget it, as
        ``terminate_child`` then ``delete_child``: neither the EXIT it may have queued nor a
        pending retry of its restart (``try_again_restart``) finds it any more."""
        if type(key) is Pid:
            self._shutdown(self._template, key)
        self._del_child(self._template, key)

    def _restart_child_by_id(self, child_id: Any) -> StartResult:
        child = self._children.get(child_id)
        if child is None:
            return ("error", "not_found")
        if isinstance(child.pid, _Restarting):
            return ("error", "restarting")
        if child.pid is not None:
            return ("error", "running")
        status, value = self._start(child)
        if status == "ok":
            child.pid = value
        return (status, value)

    def _delete_child(self, child_id: Any) -> str | StartResult:
        child = self._children.get(child_id)
        if child is None:
            return ("error", "not_found")
        if isinstance(child.pid, _Restarting):
            return ("error", "restarting")
        if child.pid is not None:
            return ("error", "running")
        self._remove(child)
        return "ok"

    def _get_childspec(self, key: Any) -> StartResult:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            if key in self._dyn:
                return ("ok", self._template.to_spec())
            return ("error", "not_found")
        child = self._children.get(key)
        return ("error", "not_found") if child is None else ("ok", child.to_spec())

    def _which_children(self) -> list[tuple[Any, Any, str, Any]]:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            t = self._template
            return [
                (None, "restarting" if isinstance(p, _Restarting) else p, t.type, t.modules)
                for p in self._dyn
            ]
        out = []
        for child_id in self._ids:
            c = self._children[child_id]
            pid: Any = "restarting" if isinstance(c.pid, _Restarting) else c.pid
            out.append((child_id, pid, c.type, c.modules))
        return out

    def _count_children(self) -> dict[str, int]:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            size = len(self._dyn)
            sup = self._template.type == "supervisor"
            return {
                "specs": 1,
                "active": size - self._dyn_restarting,
                "supervisors": size if sup else 0,
                "workers": 0 if sup else size,
            }
        counts = {"specs": 0, "active": 0, "supervisors": 0, "workers": 0}
        for c in self._children.values():
            counts["specs"] += 1
            if type(c.pid) is Pid and c.pid.is_alive():
                counts["active"] += 1
            counts["supervisors" if c.type == "supervisor" else "workers"] += 1
        return counts

    # ------------------------------------------------------------------ exits and restarts
    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "EXIT":
            self._child_exited(msg[1], msg[2])
        else:
            logger.error("%s: unexpected message %r", self._label, msg)

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "try_again_restart":
            self._try_again(msg[1])
        else:
            logger.error("%s: unexpected cast %r", self._label, msg)

    def _child_exited(self, pid: Any, reason: Any) -> None:
        if type(pid) is not Pid:
            return
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            if pid in self._dyn:
                self._do_restart(self._template, reason, pid)
            return
        for child in self._children.values():
            if child.pid is pid:
                self._do_restart(child, reason, pid)
                return
        # A pid we no longer track (already shut down or replaced): nothing to do.

    def _do_restart(self, child: _Child, reason: Any, key: Pid | _Restarting) -> None:
        if child.restart == "permanent" or (
            child.restart == "transient" and not is_normal_exit(reason)
        ):
            self._report_exit(child, reason, key)
            self._restart(child, key)
            return
        if not is_normal_exit(reason):
            self._report_exit(child, reason, key)
        self._del_child(child, key)

    def _report_exit(self, child: _Child, reason: Any, key: Any) -> None:
        level = logging.INFO if is_normal_exit(reason) else logging.ERROR
        logger.log(level, "%s: child %r (%r) exited: %r", self._label, child.id, key, reason)

    def _add_restart(self) -> bool:
        now = time.monotonic()
        restarts = self._restarts
        restarts.append(now)
        threshold = now - self._period
        while restarts and restarts[0] < threshold:
            restarts.popleft()
        return len(restarts) <= self._intensity

    def _restart(self, child: _Child, key: Pid | _Restarting) -> None:
        if not self._add_restart():
            logger.error(
                "%s: reached max restart intensity (%d in %.3g s); shutting down",
                self._label,
                self._intensity,
                self._period,
            )
            self._del_child(child, key)
            self.gave_up = True
            self.stop_self(SHUTDOWN)
            return
        retry: Any
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            retry = self._restart_dynamic(key)
        elif self._strategy == ONE_FOR_ONE:
            retry = self._restart_one(child)
        elif self._strategy == ONE_FOR_ALL:
            child.pid = None
            retry = self._restart_group(list(self._ids))
        else:
            child.pid = None
            retry = self._restart_group(self._ids[self._ids.index(child.id) :])
        if retry is not None:
            # Back to the mailbox before retrying, so that calls (e.g. a shutdown) get in.
            process.cast(self.pid, ("try_again_restart", retry))

    def _restart_one(self, child: _Child) -> Any:
        old = child.pid
        status, value = self._start(child)
        if status == "ok":
            child.pid = value
            logger.info("%s: restarted child %r as %r", self._label, child.id, value)
            return None
        logger.error("%s: restart of child %r failed: %r", self._label, child.id, value)
        child.pid = old if isinstance(old, _Restarting) else _Restarting(_pid_or_none(old))
        return child.id

    def _restart_dynamic(self, key: Pid | _Restarting) -> Any:
        args = self._dyn.pop(key)
        if isinstance(key, _Restarting):
            self._dyn_restarting -= 1
        status, value = self._start(self._template, args)
        if status == "ok":
            if value is not None:
                self._dyn[value] = args
                logger.info("%s: restarted a %r child as %r", self._label, self._template.id, value)
            return None
        logger.error("%s: restart of a %r child failed: %r", self._label, self._template.id, value)
        marker = key if isinstance(key, _Restarting) else _Restarting(key)
        self._dyn[marker] = args
        self._dyn_restarting += 1
        return marker

    def _restart_group(self, ids: list[Any]) -> Any:
        """one_for_all / rest_for_one: stop ``ids`` newest first, start them oldest first."""
        for child_id in reversed(ids):
            child = self._children[child_id]
            if type(child.pid) is Pid:
                self._shutdown(child, child.pid)
            if child.restart == "temporary":
                self._remove(child)
            else:
                child.pid = None
        for child_id in ids:
            pending = self._children.get(child_id)
            if pending is None:
                continue
            child = pending
            status, value = self._start(child)
            if status == "error":
                logger.error("%s: restart of child %r failed: %r", self._label, child_id, value)
                child.pid = _Restarting(None)
                return child_id
            if value is None and child.restart == "temporary":
                self._remove(child)
            else:
                child.pid = value
                logger.info("%s: restarted child %r as %r", self._label, child_id, value)
        return None

    def _try_again(self, key: Any) -> None:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            if isinstance(key, _Restarting) and key in self._dyn:
                self._restart(self._template, key)
            return
        child = self._children.get(key)
        if child is not None and isinstance(child.pid, _Restarting):
            self._restart(child, child.pid)

    def _del_child(self, child: _Child, key: Any = None) -> None:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            removed = key is not None and self._dyn.pop(key, None) is not None
            if removed and isinstance(key, _Restarting):
                self._dyn_restarting -= 1
            return
        if child.restart == "temporary":
            self._remove(child)
        else:
            child.pid = None

    def _remove(self, child: _Child) -> None:
        if self._children.pop(child.id, None) is not None:
            self._ids.remove(child.id)

    # ------------------------------------------------------------------ shutting down
    def _shutdown(self, child: _Child, pid: Pid) -> None:
        """Stop one child per its ``shutdown`` setting; report an unexpected exit reason."""
        process.unlink(pid)
        if child.shutdown == "brutal_kill":
            process.exit(pid, KILL)
            reason = process.wait_exit(pid)
            ok = reason == KILLED
        else:
            process.exit(pid, SHUTDOWN)
            timeout = None if child.shutdown == "infinity" else int(child.shutdown) / 1000.0
            if not pid._done.wait(timeout):
                self._abandon(child, pid)
            reason = pid.exit_reason
            ok = reason == SHUTDOWN
        if not ok and child.restart != "permanent":
            ok = is_normal_exit(reason)
        if not ok:
            logger.error(
                "%s: child %r (%r) shut down with reason %r", self._label, child.id, pid, reason
            )

    def _abandon(self, child: _Child, pid: Pid) -> None:
        logger.error(
            "%s: child %r (%r) did not stop within %s ms; killed and abandoned "
            "(Python cannot kill its thread)",
            self._label,
            child.id,
            pid,
            child.shutdown,
        )
        process.exit(pid, KILL)

    def _terminate_all(self) -> None:
        if self._strategy == SIMPLE_ONE_FOR_ONE:
            self._terminate_dynamic()
            return
        for child_id in reversed(self._ids):
            child = self._children[child_id]
            if type(child.pid) is Pid:
                self._shutdown(child, child.pid)
            child.pid = None

    def _terminate_dynamic(self) -> None:
        """simple_one_for_one: signal every child at once, then wait with one deadline."""
        template = self._template
        pids = [p for p in self._dyn if type(p) is Pid]
        brutal = template.shutdown == "brutal_kill"
        for pid in pids:
            process.unlink(pid)
            process.exit(pid, KILL if brutal else SHUTDOWN)
        deadline = None
        if isinstance(template.shutdown, int):
            deadline = time.monotonic() + template.shutdown / 1000.0
        for pid in pids:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not pid._done.wait(remaining):
                self._abandon(template, pid)
            reason = pid.exit_reason
            ok = reason == (KILLED if brutal else SHUTDOWN)
            if not ok and template.restart != "permanent":
                ok = is_normal_exit(reason)
            if not ok:
                logger.error("%s: child %r shut down with reason %r", self._label, pid, reason)
        self._dyn.clear()
        self._dyn_restarting = 0

    def terminate(self, reason: Any) -> None:
        if hasattr(self, "_strategy"):
            self._terminate_all()


def _pid_or_none(value: Pid | _Restarting | None) -> Pid | None:
    return value if type(value) is Pid else None


# ---------------------------------------------------------------------- public API
def _static_init(flags: Flags, children: list[Spec]) -> tuple[Flags, list[Spec]]:
    return flags, children


def start_link(
    flags: Flags,
    children: list[Spec],
    name: str | None = None,
    *,
    node: Node | None = None,
) -> Pid:
    """Start a supervisor linked to the caller; returns once every child has started.

    Raises ``StartError`` (``("already_started", pid)``, a bad spec, or
    ``("shutdown", ("failed_to_start_child", id, reason))``).
    """
    return Supervisor.start_link(_static_init, (dict(flags), list(children)), name=name, node=node)


def start_link_module(
    init_fn: InitFn, *args: Any, name: str | None = None, node: Node | None = None
) -> Pid:
    """Like :func:`start_link`, with ``(flags, children) = init_fn(*args)`` computed in the
    supervisor's own thread (``supervisor:start_link(Module, Args)``)."""
    return Supervisor.start_link(init_fn, args, name=name, node=node)


def start(
    flags: Flags, children: list[Spec], name: str | None = None, *, node: Node | None = None
) -> Pid:
    """Start a supervisor that is not linked to the caller (e.g. a root)."""
    return Supervisor.start(_static_init, (dict(flags), list(children)), name=name, node=node)


def _call(sup: Target, request: Any) -> Any:
    if sup == "kernel_sup":
        from waraft.otp import kernel

        kernel.kernel_sup()
    return process.call(sup, request, timeout=None)


def start_child(sup: Target, spec_or_extra_args: Any) -> StartResult:
    """Add and start a child (a spec; for simple_one_for_one the extra args list).

    ``("ok", pid)``, ``("ok", None)`` when the child ignored its start, or ``("error", r)``
    with ``("already_started", pid)``, ``"already_present"`` or the start failure reason.
    """
    return _call(sup, ("start_child", spec_or_extra_args))  # type: ignore[no-any-return]


def terminate_child(sup: Target, id_or_pid: Any) -> str | StartResult:
    """Stop a child (kept, with no pid, unless temporary). ``"ok"`` | ``("error", r)``.

    simple_one_for_one: by pid, and the child is forgotten too; a pid whose restart failed
    and is to be tried again names that pending restart, which is dropped (``"ok"``)."""
    return _call(sup, ("terminate_child", id_or_pid))  # type: ignore[no-any-return]


def restart_child(sup: Target, child_id: Any) -> StartResult:
    """Start a stopped child again: ``("ok", pid)`` | ``("error", "running" | "restarting"
    | "not_found" | reason)``."""
    return _call(sup, ("restart_child", child_id))  # type: ignore[no-any-return]


def delete_child(sup: Target, child_id: Any) -> str | StartResult:
    """Forget a stopped child's spec: ``"ok"`` | ``("error", "running" | "restarting" |
    "not_found")``."""
    return _call(sup, ("delete_child", child_id))  # type: ignore[no-any-return]


def get_childspec(sup: Target, id_or_pid: Any) -> StartResult:
    """``("ok", spec)`` | ``("error", "not_found")``."""
    return _call(sup, ("get_childspec", id_or_pid))  # type: ignore[no-any-return]


def which_children(sup: Target) -> list[tuple[Any, Any, str, Any]]:
    """``[(id, pid | None | "restarting", type, modules)]`` in start order."""
    return _call(sup, "which_children")  # type: ignore[no-any-return]


def count_children(sup: Target) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}`` counts."""
    return _call(sup, "count_children")  # type: ignore[no-any-return]


def stop(sup: Target, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor (its children first, newest first); see ``process.stop``."""
    process.stop(sup, reason, timeout)
