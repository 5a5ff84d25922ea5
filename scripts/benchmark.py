"""Throughput benchmark of a training step (the same as the `ssl-bench` command).

    python scripts/benchmark.py --backbone wrn28_2 --device cpu --json bench/wrn28_2_cpu.json

Options: python scripts/benchmark.py --help; what it measures: docs/benchmarks.md.
"""

import sys

from ssl_cli.apps.bench import main

if __name__ == "__main__":
    sys.exit(main())
