"""Each pytest-xdist worker serves on a loopback address no other test process uses."""

from __future__ import annotations

import socket

import pytest

from tests import loopback


@pytest.mark.parametrize(
    ("worker", "host"),
    [("", "127.0.0.1"), ("gw0", "127.0.0.2"), ("gw1", "127.0.0.3"), ("gw252", "127.0.0.254")],
)
def test_each_worker_has_an_address_of_its_own(
    monkeypatch: pytest.MonkeyPatch, worker: str, host: str
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    assert loopback._worker_host() == host


def test_a_worker_past_the_last_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw253")
    with pytest.raises(RuntimeError, match="gw253"):
        loopback._worker_host()


def test_a_free_port_on_this_workers_address_can_be_served_on() -> None:
    port = loopback.free_port()
    with socket.socket() as server:
        server.bind((loopback.HOST, port))
        server.listen()
        with socket.create_connection((loopback.HOST, port), timeout=5):
            pass
