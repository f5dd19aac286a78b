"""twinhead: one BiLSTM encoder, two heads (text classification + BIO sequence labeling)."""

import os

# OpenMP threads that busy-wait make training crawl (measured: 35x slower per batch) as soon as
# another process takes a core. Passive waiting costs little when the machine is idle. It must be
# set before torch starts its thread pool, so before torch is imported; the user's choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
