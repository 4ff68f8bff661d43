"""Where evaluation text goes: a logging.Logger, 'silent', or stdout."""
from __future__ import annotations

import logging
from typing import Sequence, Union

LoggerLike = Union[logging.Logger, str, None]


def print_log(msg: str, logger: LoggerLike = None) -> None:
    """``logger.info(msg)`` for a Logger, nothing for 'silent', print otherwise."""
    if isinstance(logger, logging.Logger):
        logger.info(msg)
    elif logger != 'silent':
        print(msg)


def ascii_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings (the first is the header) as a plain +---+ table."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'

    def line(row: Sequence[str]) -> str:
        return '|' + '|'.join(f' {str(c):<{w}} ' for c, w in zip(row, widths)) + '|'

    body = [line(r) for r in rows[1:]]
    return '\n'.join([rule, line(rows[0]), rule, *body, rule])
