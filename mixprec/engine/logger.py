"""The 'mixprec' logger: console and ``{timestamp}.log`` on rank 0, errors only on other ranks."""
from __future__ import annotations

import logging
import sys
from typing import Optional

from .dist_utils import get_dist_info

_FORMAT = '%(asctime)s - %(name)s - %(levelname)s - %(message)s'


def get_logger(name: str = 'mixprec', log_file: Optional[str] = None, log_level: int | str = logging.INFO) -> logging.Logger:
    """Set up (once per log file) and return the logger; safe to call again with a log file."""
    logger = logging.getLogger(name)
    logger.propagate = False
    rank, _ = get_dist_info()
    if not any(getattr(h, '_mixprec_console', False) for h in logger.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(_FORMAT))
        console._mixprec_console = True
        logger.addHandler(console)
    if log_file is not None and rank == 0:
        known = {getattr(h, 'baseFilename', None) for h in logger.handlers}
        file_handler = logging.FileHandler(log_file, 'a')
        if file_handler.baseFilename not in known:
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(file_handler)
        else:
            file_handler.close()
    logger.setLevel(log_level if rank == 0 else logging.ERROR)
    return logger
