"""The machine a run measured: cores, CPU, memory, Python and database versions."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import stack


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _postgres_version() -> str:
    if not stack.postgres_available():
        return "unavailable"
    engine = sa.create_engine(stack.POSTGRES_ADMIN_URL)
    try:
        with engine.connect() as connection:
            return str(connection.execute(sa.text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


def describe() -> dict[str, Any]:
    """What the results were measured on."""
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
        "platform": platform.platform(),
    }
