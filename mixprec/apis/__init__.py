"""High-level entry points used by the tools: training, testing, inference."""
from .inference import init_detector
from .train import (build_optimizer, check_same_config_on_all_ranks, find_latest_checkpoint, init_random_seed,
                    set_random_seed, setup_threads, train_detector)

__all__ = ['init_detector', 'build_optimizer', 'check_same_config_on_all_ranks', 'find_latest_checkpoint', 'init_random_seed',
           'set_random_seed', 'setup_threads', 'train_detector']
