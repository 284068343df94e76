"""``python -m benchmarks run|table|plot``: the benchmark harness (``benchmarks/README.md``)."""

import sys

from benchmarks.harness.cli import main

sys.exit(main())
