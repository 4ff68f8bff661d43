"""Random-number-generator states as tensors and ints, so checkpoints load with weights_only."""
from __future__ import annotations

import random

import numpy as np
import torch


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class preserved_rng_state:
    """Context manager: whatever runs inside leaves the torch, numpy and python RNGs as they were."""

    def __enter__(self) -> None:
        self._state = get_rng_state()

    def __exit__(self, *exc) -> None:
        set_rng_state(self._state)
