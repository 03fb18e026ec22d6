"""Paths as the command line takes them.

This module loads nothing else: parsing a command's flags uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def directory(text: str) -> Path:
    """A directory to write, an argparse type.  ``Path("")`` is the current directory: an
    empty value (an unset shell variable, say) would write a PKI or a registry store
    wherever the command happened to run."""
    if not text:
        raise argparse.ArgumentTypeError(
            "an empty path would be the current directory: name the directory"
        )
    return Path(text)
