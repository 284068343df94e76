"""Public face of WARaft's ``wa_raft_part_sup``.

The code lives in :mod:`waraft.partition.part_sup`.
"""

from waraft.partition.part_sup import *  # noqa: F403
from waraft.partition.part_sup import __all__ as __all__
