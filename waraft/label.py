"""Public face of WARaft's ``wa_raft_label``; the code lives in :mod:`waraft.services.label`."""

from waraft.services.label import *  # noqa: F403
from waraft.services.label import __all__ as __all__
