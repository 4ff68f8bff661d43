"""High-level entry points used by the tools: training, testing, inference."""
from .inference import inference_detector, init_detector, show_result_pyplot
from .train import (build_optimizer, check_same_config_on_all_ranks, find_latest_checkpoint, init_random_seed,
                    set_random_seed, setup_threads, train_detector)

__all__ = ['inference_detector', 'init_detector', 'show_result_pyplot', 'build_optimizer',
           'check_same_config_on_all_ranks', 'find_latest_checkpoint', 'init_random_seed', 'set_random_seed',
           'setup_threads', 'train_detector']
