"""Public face of WARaft's ``wa_raft_server``; the code lives in :mod:`waraft.partition.server`."""

from waraft.partition.server import *  # noqa: F403
from waraft.partition.server import __all__ as __all__
