"""``python -m waraft.cli``: the ``waraft`` command."""

import sys

from waraft.cli import main

sys.exit(main())
