"""Blocks written by hand on a command line: ``PROGRAM[/SERIES]:START-END``.

The canonical way to name units that have no registry serial of their own (a mirror's,
``VCS/shenzhen-mirror:1-100``), or any units without their registry's format.
"""

from __future__ import annotations

import argparse
import re

from registry_bridge.model import BlockId, Program

_BLOCK = re.compile(
    r"^(?P<program>[A-Z][A-Z0-9-]*)(/(?P<series>[^:]*))?:(?P<start>\d+)-(?P<end>\d+)$"
)


def parse_block(text: str) -> BlockId:
    """A canonical block written ``PROGRAM[/SERIES]:START-END`` (e.g. a mirror's).

    Raises:
        argparse.ArgumentTypeError: The text is not a block.
    """
    match = _BLOCK.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not PROGRAM[/SERIES]:START-END")
    try:
        return BlockId(
            Program(match["program"]),
            match["series"] or "",
            int(match["start"]),
            int(match["end"]),
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
