"""Public face of WARaft's ``wa_raft_env``; the code lives in :mod:`waraft.services.env`."""

from waraft.services.env import *  # noqa: F403
from waraft.services.env import __all__ as __all__
