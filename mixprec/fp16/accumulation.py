"""Gradient accumulation windows, the rule of mmcv 1.x's GradientCumulative(Fp16)OptimizerHook,
shared by the fp32 and the mixed-precision optimizer hooks."""
from __future__ import annotations

from typing import Optional


def window(it: int, cumulative_iters: int, max_iters: Optional[int]) -> tuple[int, bool, bool]:
    """``(loss divisor, first iteration of its window, last iteration of its window)`` for the
    0-based iteration ``it``.

    Windows start at multiples of ``cumulative_iters``; the run's last, incomplete window divides
    by its own length and ends at ``max_iters``. Without ``max_iters`` (a runner that does not say)
    every window is whole.
    """
    n = cumulative_iters
    divisor = n
    if max_iters:
        tail_start = max_iters // n * n
        if it >= tail_start:
            divisor = max_iters - tail_start
    last = (it + 1) % n == 0 or (bool(max_iters) and it + 1 >= max_iters)
    return divisor, it % n == 0, last
