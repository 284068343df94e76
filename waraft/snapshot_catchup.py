"""Public face of WARaft's ``wa_raft_snapshot_catchup``.

The code lives in :mod:`waraft.transport.snapshot_catchup`.
"""

from waraft.transport.snapshot_catchup import *  # noqa: F403
from waraft.transport.snapshot_catchup import __all__ as __all__
