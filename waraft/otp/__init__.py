"""``waraft.otp``: an Erlang/OTP-style actor runtime on pykka.

Processes with call/cast/send and deferred replies, let-it-crash, links, monitors and exit
signals, also to ``(name, node)`` on other nodes once ``waraft.distribution`` runs
(:mod:`~waraft.otp.process`), each on a thread of its own or scheduled as a greenlet on
a few scheduler threads per node (:mod:`~waraft.otp.sched`); per-node name registries
(:mod:`~waraft.otp.registry`) and nodes (:mod:`~waraft.otp.node`); timers
(:mod:`~waraft.otp.timer`); a gen_statem helper (:mod:`~waraft.otp.statem`); supervisors
(:mod:`~waraft.otp.supervisor`) and each node's root supervisor ``kernel_sup``
(:mod:`~waraft.otp.kernel`). Importing this package starts no thread.
"""

from waraft.otp import kernel, node, registry, sched, supervisor, timer
from waraft.otp.errors import (
    ExitError,
    OtpError,
    RegistrationError,
    StartError,
    is_normal_exit,
)
from waraft.otp.node import Node, RemoteRouter
from waraft.otp.pid import MonitorRef, Pid, Ref, RemotePid, make_ref
from waraft.otp.process import (
    CastReply,
    Process,
    Target,
    call,
    cast,
    demonitor,
    exit,
    is_alive,
    kill,
    link,
    monitor,
    self_pid,
    send,
    send_request,
    start,
    start_link,
    stop,
    unlink,
    wait_exit,
    wait_response,
)
from waraft.otp.registry import register, registered, unregister, whereis
from waraft.otp.reply import DISCARD, NOREPLY, LocalReplyTo, ReplyTo, reply
from waraft.otp.sched import (
    SCHEDULED,
    THREAD,
    Event,
    at_turn_end,
    blocking,
    default_process_type,
    set_default_process_type,
    sleep,
)
from waraft.otp.sched import stats as scheduler_stats
from waraft.otp.statem import StateMachine
from waraft.otp.threadname import set_os_name
from waraft.otp.timer import TimerRef, cancel_timer, send_after

__all__ = [
    "DISCARD",
    "NOREPLY",
    "SCHEDULED",
    "THREAD",
    "CastReply",
    "Event",
    "ExitError",
    "LocalReplyTo",
    "MonitorRef",
    "Node",
    "OtpError",
    "Pid",
    "Process",
    "Ref",
    "RegistrationError",
    "RemotePid",
    "RemoteRouter",
    "ReplyTo",
    "StartError",
    "StateMachine",
    "Target",
    "TimerRef",
    "at_turn_end",
    "blocking",
    "call",
    "cancel_timer",
    "cast",
    "default_process_type",
    "demonitor",
    "exit",
    "is_alive",
    "is_normal_exit",
    "kernel",
    "kill",
    "link",
    "make_ref",
    "monitor",
    "node",
    "register",
    "registered",
    "registry",
    "reply",
    "sched",
    "scheduler_stats",
    "self_pid",
    "send",
    "send_after",
    "send_request",
    "set_default_process_type",
    "set_os_name",
    "sleep",
    "start",
    "start_link",
    "stop",
    "supervisor",
    "timer",
    "unlink",
    "unregister",
    "wait_exit",
    "wait_response",
    "whereis",
]
