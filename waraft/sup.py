"""Public face of WARaft's ``wa_raft_sup``; the code lives in :mod:`waraft.partition.sup`."""

from waraft.partition.sup import *  # noqa: F403
from waraft.partition.sup import __all__ as __all__
