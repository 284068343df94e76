"""The old name of :mod:`waraft.distribution` (WARaft's ``wa_raft_distribution``), kept as a face.

The package was renamed because tools commonly skip a folder named ``dist`` as build output.
"""

from waraft.distribution import *  # noqa: F403
from waraft.distribution import __all__ as __all__
