"""``python -m bench``: the same as ``carbonlink bench``."""

from gateway.cli import main

raise SystemExit(main(["bench", *__import__("sys").argv[1:]]))
