"""Public face of WARaft's ``wa_raft_durable_state``.

The code lives in :mod:`waraft.partition.durable_state`.
"""

from waraft.partition.durable_state import *  # noqa: F403
from waraft.partition.durable_state import __all__ as __all__
