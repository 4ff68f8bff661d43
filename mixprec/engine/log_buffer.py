"""LogBuffer: running sums of logged scalars, averaged when a logger hook asks."""
from __future__ import annotations

from collections import OrderedDict


class LogBuffer:
    """Collects scalars per iteration; ``average()`` fills ``output`` for the logger hooks.

    ``update(vars, count)`` weights each value by ``count`` (the batch size), as mmcv 1.x did.
    """

    def __init__(self) -> None:
        self.val_history: OrderedDict[str, list[float]] = OrderedDict()
        self.n_history: OrderedDict[str, list[int]] = OrderedDict()
        self.output: OrderedDict[str, float] = OrderedDict()
        self.ready = False

    def clear(self) -> None:
        self.val_history.clear()
        self.n_history.clear()
        self.clear_output()

    def clear_output(self) -> None:
        self.output.clear()
        self.ready = False

    def update(self, vars: dict, count: int = 1) -> None:
        for key, value in vars.items():
            self.val_history.setdefault(key, []).append(float(value))
            self.n_history.setdefault(key, []).append(count)

    def average(self, n: int = 0) -> None:
        """Average the last ``n`` values of each key (all when ``n`` is 0) into ``output``."""
        for key, values in self.val_history.items():
            vals, nums = values[-n:], self.n_history[key][-n:]
            total = sum(nums)
            self.output[key] = sum(v * c for v, c in zip(vals, nums)) / total if total else 0.0
        self.ready = True
