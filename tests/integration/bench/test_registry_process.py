"""The benchmarks' registry emulators run in a child process that never outlives the bench."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench import stack, transport
from bench.common import process_cpu_seconds


def _gone(pid: int, within_seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # An exited process stays a zombie until its (new) parent reaps it: gone too.
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_the_emulators_serve_from_another_process_and_stop_with_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[subprocess.Popen[Any]] = []
    popen = subprocess.Popen

    def record(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        process = popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(subprocess, "Popen", record)
    with pytest.raises(RuntimeError, match="the bench failed"), stack.registries() as linked:
        assert set(linked.targets) == set(stack.WIRED)
        assert started[0].pid != os.getpid()
        raise RuntimeError("the bench failed")
    [process] = started
    assert process.returncode is not None  # stopped and reaped on the way out


def test_the_emulators_stop_when_the_bench_process_is_killed() -> None:
    script = (
        "import os, sys\n"
        "from bench import stack\n"
        "with stack.registries():\n"
        "    print(os.getpid(), flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    bench = subprocess.Popen(
        [sys.executable, "-P", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stdout is not None
        assert int(bench.stdout.readline()) == bench.pid
        children = subprocess.run(
            ["pgrep", "-P", str(bench.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 1, children
        os.kill(bench.pid, signal.SIGKILL)  # no clean-up runs in the bench process
        bench.wait(10)
        assert _gone(int(children[0])), "the registry emulators outlived the bench"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_the_serving_process_serves_an_echo_and_a_relay_makes_its_calls_to_it() -> None:
    config = stack.gateway_config("sqlite://", ())
    request = stack.transfer_request("floor", stack.SERIAL_START)
    with stack.serving_process((stack.ECHO,)) as downstream:
        assert set(downstream.targets) == {stack.ECHO}
        before = process_cpu_seconds(downstream.pid)
        with transport.relay_server(config, downstream.targets[stack.ECHO], (100, 1, 99)) as target:
            channel = grpc.insecure_channel(target)
            try:
                reply = transport.echo_method(channel)(request, timeout=30)
            finally:
                channel.close()
        assert reply == request
        # The relay's 200 calls were answered in the other process, not in this one.
        assert process_cpu_seconds(downstream.pid) > before


def test_a_serving_process_that_cannot_start_says_why() -> None:
    with (
        pytest.raises(RuntimeError, match="did not start: KeyError"),
        stack.serving_process(("no-such-registry",)),
    ):
        pass
