"""envs: Crafter and Atari with the paper's semantics, and batched stepping for collection.

Crafter's world generation evaluates its noise with numba's *parallel* loops when numba is
installed. On small or shared machines those threads cost far more than they save (measured on a
busy 2-core machine: 13 noise grids in 21 ms with 2 threads, 6 ms with one), and collection
already runs one env process per core on large ones. So numba defaults to one thread here; it is
a default only (an explicit ``NUMBA_NUM_THREADS`` wins) and must be set before numba is imported.
"""

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
