"""CPU threads of a run: torch's intra-op pool and the BLAS/OpenMP pools that numpy and scikit-learn use
(threadpoolctl), set once before the work starts (`--threads` of every expert command, the quickstart's).

Left unset, each library keeps its default (one thread per core). On a machine whose cores other jobs share, those
threads spin-wait for each other: the README's U-Net `segment` run took 148 s with 2 threads and 16 s with 1 on 2
shared cores (same result)."""
from __future__ import annotations


def check_threads(threads: int | None) -> None:
    """The one rule for a thread count (a recipe's `threads`): None, or at least 1."""
    if threads is not None and threads < 1:
        raise ValueError(f"must be at least 1, got {threads}")


def use_threads(threads: int | None) -> None:
    """Set every pool to `threads` (checked by the recipe: `check_threads`) for the rest of the process; None leaves
    the defaults."""
    if threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(threads))
    threadpool_limits(limits=int(threads))  # called, not entered: the limits stay for the process
