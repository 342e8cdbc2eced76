from __future__ import annotations

import re
from typing import Any

import pytest

from ctr2svc.errors import ImageError
from ctr2svc.model import HealthCheck, ImageConfig


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
