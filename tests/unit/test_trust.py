"""The signature policy's scopes as containers-policy.json(5) orders them, and what a package records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr2svc.errors import UsageError
from ctr2svc.image import trust
from ctr2svc.image.reference import parse

ACCEPT = {"type": "insecureAcceptAnything"}
REJECT = {"type": "reject"}


def policy(transports: dict[str, dict[str, list[dict[str, str]]]]) -> trust.Policy:
    return trust.Policy(Path("/etc/containers/policy.json"), {"default": [REJECT], "transports": transports})


@pytest.mark.parametrize(
    ("scopes", "reference", "found"),
    [
        # The most specific scope wins: repository, then enclosing namespaces, host, wildcard domains.
        (
            ["reg.example.com/apps/web", "reg.example.com/apps", "reg.example.com"],
            "reg.example.com/apps/web:1",
            "reg.example.com/apps/web",
        ),
        (["reg.example.com/apps", "reg.example.com"], "reg.example.com/apps/web:1", "reg.example.com/apps"),
        (["reg.example.com", "*.example.com"], "reg.example.com/apps/web:1", "reg.example.com"),
        (["*.example.com", "*.com"], "reg.example.com/apps/web:1", "*.example.com"),
        (["", "other.example.com"], "reg.example.com/web:1", ""),
        # A port is part of the host scope, not of the wildcard's domain.
        (["127.0.0.1:5000/trusted"], "127.0.0.1:5000/trusted/app:1.0", "127.0.0.1:5000/trusted"),
        # A sibling repository whose name shares a prefix is not inside the scope.
        (["reg.example.com/app"], "reg.example.com/apps/web:1", None),
    ],
)
def test_docker_scopes(scopes: list[str], reference: str, found: str | None) -> None:
    rules = policy({"docker": {scope: [ACCEPT] for scope in scopes}})
    req = trust.requirement(rules, parse(reference))
    if found is None:
        assert req.scope == "default" and req.requirements == (REJECT,)
    else:
        assert req.scope.startswith(f"docker:{found}") and req.requirements == (ACCEPT,)


def test_a_tag_scope_does_not_match_the_pinned_pull() -> None:
    """ctr2svc pulls by digest, and skopeo judges that reference: a scope with a tag never applies."""
    rules = policy({"docker": {"reg.example.com/web:1": [ACCEPT]}})
    ref = parse("reg.example.com/web:1")
    assert trust.requirement(rules, ref).scope.startswith("docker:reg.example.com/web:1")
    pinned = ref.pinned("sha256:" + "a" * 64)
    assert trust.requirement(rules, ref, pinned).scope == "default"


def test_local_layouts_by_directory(tmp_path: Path) -> None:
    layout = tmp_path / "images" / "app"
    rules = policy({"oci": {str(tmp_path / "images"): [ACCEPT]}})
    assert trust.requirement(rules, parse(f"oci:{layout}:1.0")).requirements == (ACCEPT,)
    assert trust.requirement(rules, parse(f"oci:{tmp_path / 'elsewhere'}:1.0")).scope == "default"


def test_the_record_names_keys_by_fingerprint_not_by_build_host_path(tmp_path: Path) -> None:
    key = tmp_path / "cosign.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    rules = policy({"docker": {"reg.example.com": [{"type": "sigstoreSigned", "keyPath": str(key)}]}})
    req = trust.requirement(rules, parse("reg.example.com/web:1"))
    record = req.record("sha256:" + "b" * 64)
    assert req.checks and record["verified"] is True
    assert record["requirements"] == [
        {"type": "sigstoreSigned", "keys": [trust.public_key_id(key.read_bytes())]}
    ]
    assert str(tmp_path) not in json.dumps(record)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[]", "no 'default' list"),
        ('{"default": [{"type": "signedBy"}], "transports": {"docker": []}}', "not a map"),
        ('{"default": [{"kind": "x"}]}', "unknown requirement type None"),
    ],
)
def test_broken_policies(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=words):
        trust.load(path)


def test_no_policy_anywhere_accepts_anything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trust, "SYSTEM_POLICY", tmp_path / "missing.json")
    loaded = trust.load(None)
    assert loaded.path is None and not trust.requirement(loaded, parse("reg.example.com/web:1")).checks
