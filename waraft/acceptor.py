"""Public face of WARaft's ``wa_raft_acceptor``.

The code lives in :mod:`waraft.partition.acceptor`.
"""

from waraft.partition.acceptor import *  # noqa: F403
from waraft.partition.acceptor import __all__ as __all__
