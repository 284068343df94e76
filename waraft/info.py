"""Public face of WARaft's ``wa_raft_info``; the code lives in :mod:`waraft.services.info`."""

from waraft.services.info import *  # noqa: F403
from waraft.services.info import __all__ as __all__
