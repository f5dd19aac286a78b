"""twinhead: one BiLSTM encoder, two heads (text classification + BIO sequence labeling)."""

import os

# OpenMP threads that busy-wait make training crawl as soon as another process takes a core; fully
# passive threads halve the speed on an idle machine. A short spin, then sleep, keeps most of both
# (benchmarks/train_speed.py, 2 cores, ms per batch, idle / one core busy): busy-wait 100 / 4197,
# passive 183 / 122, passive + 2000 spins 106 / 200. Set before torch starts its thread pool, so
# before torch is imported; the user's own settings win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

__version__ = "0.1.0"
