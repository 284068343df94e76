"""Public face of WARaft's ``wa_raft_app / wa_raft_app_sup``.

The code lives in :mod:`waraft.partition.app`.
"""

from waraft.partition.app import *  # noqa: F403
from waraft.partition.app import __all__ as __all__
