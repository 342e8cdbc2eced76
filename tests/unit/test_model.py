from __future__ import annotations

from ctr2svc.model import HealthCheck


def test_docker_healthcheck_forms() -> None:
    shell = HealthCheck.from_image(
        {
            "Test": ["CMD-SHELL", "redis-cli ping"],
            "Interval": 5_000_000_000,
            "Retries": 5,
            "StartPeriod": 10**10,
        }
    )
    assert shell == HealthCheck(("/bin/sh", "-c", "redis-cli ping"), 5, 30, 5, 10)
    assert HealthCheck.from_image({"Test": ["CMD", "/bin/check", "--quick"]}) == HealthCheck(
        ("/bin/check", "--quick")
    )
    # NONE switches off a check inherited from a base image; nothing declared means none.
    assert HealthCheck.from_image({"Test": ["NONE"]}) is None
    assert HealthCheck.from_image(None) is None
    assert HealthCheck.from_image({"Test": ["CMD"]}) is None
