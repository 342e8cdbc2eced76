from __future__ import annotations

import re
from typing import Any

import pytest

from ctr2svc.errors import ImageError
from ctr2svc.image.config import ImageConfig
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


# An image config is the image author's JSON: every wrong type is an ImageError naming the field,
# never a traceback.
BAD_CONFIGS = [
    ({"config": {"Entrypoint": "/bin/sh -c evil"}}, "config.Entrypoint of the wrong type"),
    ({"config": {"Cmd": ["ok", 1]}}, "config.Cmd that is not a list of strings"),
    ({"config": {"Env": {"A": "1"}}}, "config.Env of the wrong type"),
    ({"config": {"Labels": {"a": 1}}}, "config.Labels that are not all strings"),
    ({"config": {"Volumes": ["/data"]}}, "config.Volumes of the wrong type"),
    ({"config": {"User": 0}}, "config.User of the wrong type"),
    ({"config": {"StopSignal": 15}}, "config.StopSignal of the wrong type"),
    ({"config": "nope"}, "config of the wrong type"),
    ({"architecture": ["amd64"]}, "architecture of the wrong type"),
    ({"created": 12}, "created of the wrong type"),
    ([], "is not a JSON object"),
    # What umoci (Go) cannot read, or runc refuses at every start: said here, before either runs.
    ({"config": {"Env": ["PATH=/bin", "JUSTNAME"]}}, "Env entry that has no '=': 'JUSTNAME'"),
    ({"config": {"Env": ["=x"]}}, "Env entry that has an empty name"),
    ({"config": {"Env": ["A=b\0c"]}}, "Env entry that holds a NUL character"),
    ({"config": {"User": "4294967295"}}, "User '4294967295' is out of range"),
    ({"config": {"User": "2147483648"}}, "User '2147483648' is out of range"),
    ({"config": {"User": "-1"}}, "User '-1' is out of range"),
    ({"config": {"User": "app:99999999999"}}, "User 'app:99999999999' is out of range"),
    # umoci's "unable to find user  1000" (two spaces) escaped the mapping of a missing user: exit 4.
    ({"config": {"User": " 1000"}}, "User ' 1000' has white space"),
    ({"config": {"User": "app:my group"}}, "User 'app:my group' has white space"),
    ({"created": "yesterday"}, "created time that is not an RFC 3339 time: 'yesterday'"),
    ({"created": ""}, "created time that is not an RFC 3339 time: ''"),
    ({"created": "2024-01-01T00:00:00"}, "not an RFC 3339 time"),
    ({"created": "2024-01-01 00:00:00Z"}, "not an RFC 3339 time"),
    ({"created": "2023-02-29T00:00:00Z"}, "not an RFC 3339 time"),
    ({"created": "2024-01-01T00:00:60Z"}, "not an RFC 3339 time"),
    ({"created": "10000-01-01T00:00:00Z"}, "not an RFC 3339 time"),
    ({"config": {"Cmd": ["/bin/sh", "-c", "a\0b"]}}, "config.Cmd that holds a NUL character"),
    ({"config": {"Entrypoint": ["/bin/\0sh"]}}, "config.Entrypoint that holds a NUL character"),
    ({"config": {"WorkingDir": "/srv\0"}}, "config.WorkingDir that holds a NUL character"),
    ({"config": {"User": "app\0"}}, "config.User that holds a NUL character"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_malformed_image_configs_are_image_errors(doc: Any, message: str) -> None:
    with pytest.raises(ImageError, match=re.escape(message)):
        ImageConfig.from_json(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"Test": "CMD-SHELL true"},
        {"Test": ["CMD", 1]},
        {"Test": ["CMD", "true"], "Interval": "5s"},
        {"Test": ["CMD", "true"], "Retries": -1},
        {"Test": ["CMD", "true"], "Timeout": 1.5},
    ],
)
def test_malformed_healthchecks_are_image_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(ImageError, match="HEALTHCHECK"):
        HealthCheck.from_image(doc)


@pytest.mark.parametrize(
    "doc",
    [
        # Go's zero time, year 0 and 9999, a zone Go does not check, a comma before the fraction: umoci
        # reads them all, so they are not refused (the package's times are clamped to what it can store).
        {"created": "0001-01-01T00:00:00Z"},
        {"created": "0000-02-29T00:00:00Z"},
        {"created": "9999-12-31T23:59:59.999999999+14:00"},
        {"created": "2024-01-01T00:00:00+25:00"},
        {"created": "2024-01-01T00:00:00,5Z"},
        {"created": None},
        {"config": {"User": "2147483647:0", "Env": ["A=", "B==c"]}},
        {"config": {"User": "app:app"}},
        {"config": {"User": "99999999999999999999999x"}},  # a name, which umoci looks up
    ],
)
def test_configs_umoci_accepts_are_accepted(doc: dict[str, Any]) -> None:
    ImageConfig.from_json(doc)


def test_an_images_health_timings_are_clamped() -> None:
    # Nanoseconds of an image author's choosing: beyond a day a systemd timer line stops making sense.
    check = HealthCheck.from_image(
        {
            "Test": ["CMD", "true"],
            "Interval": 10**30,
            "Timeout": 10**30,
            "StartPeriod": 10**30,
            "Retries": 10**9,
        }
    )
    assert check == HealthCheck(("true",), 86400, 86400, 10000, 86400)
