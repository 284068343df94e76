"""Public face of WARaft's ``wa_raft_metrics``; the code lives in :mod:`waraft.services.metrics`."""

from waraft.services.metrics import *  # noqa: F403
from waraft.services.metrics import __all__ as __all__
