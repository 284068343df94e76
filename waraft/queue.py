"""Public face of WARaft's ``wa_raft_queue``; the code lives in :mod:`waraft.partition.queue`."""

from waraft.partition.queue import *  # noqa: F403
from waraft.partition.queue import __all__ as __all__
