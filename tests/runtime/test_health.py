"""Readiness and health: waits measured by the clock, failures counted in a row."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import Helper

# prepare mounts the root, start runs the stand-in container.
pytestmark = pytest.mark.usefixtures("as_root")


def test_ready_once_the_port_listens(helper: Helper) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        helper.run("prepare")
        helper.run("start")
        begin = time.monotonic()
        helper.run("wait-ready", str(port), "5")
        assert time.monotonic() - begin < 2
    helper.run("stop")


def test_not_ready_after_its_seconds(helper: Helper) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening
        helper.run("prepare")
        helper.run("start", extra={"FAKE_STATE_DELAY": "0.3"})
        begin = time.monotonic()
        waited = helper.run("wait-ready", str(port), "2", extra={"FAKE_STATE_DELAY": "0.3"}, check=False)
        took = time.monotonic() - begin
    assert waited.returncode == 1
    assert waited.stderr.strip() == f"kv-svc: nothing listens on port {port} after 2 s"
    assert 2 <= took < 3.5, f"waited {took:.1f} s"
    helper.run("stop")


def test_not_ready_when_the_container_stops(helper: Helper) -> None:
    helper.run("prepare")
    helper.run("start")
    helper.run("stop")
    waited = helper.run("wait-ready", "1", "30", check=False)
    assert waited.returncode == 1
    assert "the container stopped before it listened on port 1" in waited.stderr


def test_unhealthy_after_the_retries_in_a_row(helper: Helper) -> None:
    """HEALTH_RETRIES=2: the first failure is reported, the second fails the check (the timer's unit
    then restarts the service); a pass in between starts the count again."""
    helper.run("prepare")
    helper.run("start")
    failing = {"FAKE_EXEC_STATUS": "1"}
    first = helper.run("health", extra=failing)
    assert "kv-svc: health check failed (1 of 2)" in first.stderr
    helper.run("health")  # passes: the count starts again
    helper.run("health", extra=failing)
    second = helper.run("health", extra=failing, check=False)
    assert second.returncode == 1
    assert "kv-svc: unhealthy after 2 failed health checks in a row; restarting" in second.stderr
    helper.run("stop")


def test_wait_healthy_gives_up_by_the_clock(helper: Helper) -> None:
    helper.run("prepare")
    helper.run("start")
    begin = time.monotonic()
    waited = helper.run("wait-healthy", "2", extra={"FAKE_EXEC_STATUS": "1"}, check=False)
    assert waited.returncode == 1 and "its health check did not pass within 2 s" in waited.stderr
    assert 2 <= time.monotonic() - begin < 4.5
    helper.run("stop")
