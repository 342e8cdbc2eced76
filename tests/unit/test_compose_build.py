"""A compose service's build: mapped onto a podman build into ctr2svc's cache (ctr2svc/apps/compose_build.py),
and --image SERVICE=REF in its place. The build itself runs in tests/integration/test_compose_build.py;
here podman's command line is read at the run() seam.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr2svc.apps import compose, compose_build
from ctr2svc.apps.entries import Application
from ctr2svc.errors import ToolError, UsageError
from ctr2svc.image.reference import Transport

from .test_compose import load, write

DOCKERFILE = "FROM 127.0.0.1:5000/base:1\nCOPY site /srv/site\n"


def build_of(app: Application, name: str) -> compose_build.ImageBuild:
    found = next(s for s in app.services if s.service == name)
    assert found.build is not None
    return found.build


def test_a_service_with_only_build_is_built(tmp_path: Path) -> None:
    text = """
services:
  web:
    build:
      context: ./web
      dockerfile: web.Dockerfile
      args: {GREETING: hello, UNSET_ARG: null}
      target: prod
      labels: {com.example.team: ops}
      cache_from: [example/cache]
"""
    path = write(tmp_path / "shop", text, web__web_dot_Dockerfile=DOCKERFILE)
    app = load(path, cache_dir=tmp_path / "cache")
    build = build_of(app, "web")
    assert build.context == tmp_path / "shop" / "web"
    assert build.dockerfile == tmp_path / "shop" / "web" / "web.Dockerfile"
    assert build.args == (("GREETING", "hello"),) and build.target == "prod"
    assert build.labels == (("com.example.team", "ops"),)
    # Written where ctr2svc's cache is, and packaged from there like any local image; tagged latest
    # as compose tags what it builds.
    plan = app.services[0]
    ref = plan.options.reference
    assert ref.transport is Transport.OCI and ref.tag == "latest"
    assert ref.name == str(tmp_path / "cache" / "built" / "shop-web")
    assert build.store == tmp_path / "cache" / "podman"


def test_build_with_image_pulls_unless_pull_policy_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "services:\n  web:\n    image: reg.example.com/web:2.1\n    build: .\n"
    path = write(tmp_path / "p", text, Dockerfile=DOCKERFILE)
    app = load(path)
    assert (
        str(app.services[0].options.reference) == "reg.example.com/web:2.1" and app.services[0].build is None
    )
    assert "not built" in capsys.readouterr().err
    path.write_text(text + "    pull_policy: build\n")
    built = load(path)
    # The image's tag names what is built: the package version follows from it.
    assert built.services[0].options.reference.tag == "2.1" and built.services[0].build is not None


def test_image_option_replaces_build_and_image(tmp_path: Path) -> None:
    text = "services:\n  web:\n    build: .\n  db:\n    image: postgres:16\n"
    path = write(tmp_path / "p", text, Dockerfile=DOCKERFILE)
    app = compose.load(
        path,
        None,
        {"output_dir": Path("dist")},
        (),
        {"web": "oci:/srv/web:1.0", "db": "reg.example.com/pg:16"},
    )
    refs = {s.service: str(s.options.reference) for s in app.services}
    assert refs == {"web": "oci:/srv/web:1.0", "db": "reg.example.com/pg:16"}
    assert all(s.build is None for s in app.services)
    with pytest.raises(UsageError, match="has no service 'nope'"):
        compose.load(path, None, {"output_dir": Path("dist")}, (), {"nope": "x:1"})
    with pytest.raises(UsageError, match="is not SERVICE=REF"):
        compose.parse_images(["web"])


def test_unsupported_build_keys_and_missing_files_are_all_reported(tmp_path: Path) -> None:
    text = """
services:
  a:
    build:
      context: .
      dockerfile_inline: "FROM scratch"
      ssh: [default]
  b:
    build: ./nothere-b
  c:
    build:
      context: https://github.com/example/app.git
"""
    path = write(tmp_path / "p", text)
    (tmp_path / "p" / "nothere-b").mkdir()
    with pytest.raises(UsageError) as caught:
        load(path)
    message = caught.value.one_line()
    assert "services.a.build.dockerfile_inline: not supported" in message
    assert "services.a.build.ssh: not supported" in message and "--image SERVICE=REF" in message
    assert "services.b.build.dockerfile" in message and "does not exist" in message
    assert "services.c.build.context" in message and "remote context" in message


def test_pull_policy_never_names_the_next_step(tmp_path: Path) -> None:
    path = write(tmp_path / "p", "services:\n  a:\n    image: a:1\n    pull_policy: never\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    assert "pull_policy: never" in caught.value.one_line() and "--image a=REF" in caught.value.one_line()


def _spec(tmp_path: Path, dockerfile: str = DOCKERFILE, **changes: Any) -> compose_build.ImageBuild:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    values: dict[str, Any] = {
        "service": "web",
        "context": context,
        "dockerfile": context / "Dockerfile",
        "args": (("A", "1"),),
        "target": "prod",
        "labels": (),
        "network": None,
        "no_cache": False,
        "pull": False,
        "store": tmp_path / "cache" / "podman",
        "layout": tmp_path / "cache" / "built" / "p-web",
        "tag": "latest",
        "tls_verify": None,
        **changes,
    }
    return compose_build.ImageBuild(**values)


def test_podman_runs_in_a_store_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    confs: list[str] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append([str(a) for a in argv])
        env = kwargs.get("env") or {}
        if "CONTAINERS_REGISTRIES_CONF" in env:
            confs.append(Path(env["CONTAINERS_REGISTRIES_CONF"]).read_text())
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(compose_build, "run", fake_run)
    monkeypatch.setattr(compose_build, "find_tool", lambda name, reason: f"/usr/bin/{name}")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    spec = _spec(tmp_path)
    compose_build.build(spec)
    build, push = calls
    store = ["--root", str(spec.store / "root"), "--runroot", str(compose_build.runroot(spec.store))]
    assert build[1:5] == store and build[5:7] == ["--runtime", "/usr/bin/runc"]
    assert build[build.index("--timestamp") + 1] == "1700000000"
    assert build[build.index("--build-arg") + 1] == "A=1" and build[build.index("--target") + 1] == "prod"
    assert build[-1] == str(spec.context) and "--tls-verify=false" not in build
    assert push[-1] == f"oci:{spec.layout}:latest"
    # The FROM registry on loopback is reached without TLS, as Docker and ctr2svc's pulls do; short
    # names are Docker Hub's.
    assert 'location = "127.0.0.1:5000"\ninsecure = true' in confs[0]
    assert 'unqualified-search-registries = ["docker.io"]' in confs[0]


def test_the_date_is_the_contexts_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    spec = _spec(tmp_path)
    (spec.context / "sub").mkdir()
    for number, name in enumerate(("Dockerfile", "sub/a", "sub")):
        target = spec.context / name
        if not target.exists():
            target.write_text("x")
        stamp = 1_600_000_000 + number * 1000
        os.utime(target, (stamp, stamp))
    os.utime(spec.context, (1_500_000_000, 1_500_000_000))
    assert compose_build.timestamp(spec.context) == 1_600_002_000


def test_a_missing_podman_is_one_line_naming_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, reason: str) -> str:
        raise ToolError(
            f"could not find {name}, which is required to {reason}", hint="apt-get install podman"
        )

    monkeypatch.setattr(compose_build, "find_tool", missing)
    with pytest.raises(ToolError) as caught:
        compose_build.build(_spec(tmp_path))
    assert caught.value.one_line().startswith(
        "could not find podman, which is required to build the image of"
    )
    assert "apt-get install podman" in caught.value.one_line()


def test_the_podman_hint_is_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctr2svc import run

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(ToolError) as caught:
        run.find_tool("podman", "build images")
    assert "apt-get install podman" in caught.value.one_line()


def test_image_option_goes_with_a_compose_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ctr2svc.cli import cli

    # The command raises the UsageError that ctr2svc's main() prints (exit status 2).
    one = CliRunner().invoke(cli, ["build", "--image", "web=x:1", "nginx:1"])
    assert isinstance(one.exception, UsageError) and "--image goes with a compose file" in str(one.exception)
    project = tmp_path / "ctr2svc.toml"
    project.write_text('[[image]]\nref = "nginx:1"\n')
    for argv in (["build", "-c", str(project)], ["update", "-c", str(project), "--repo", str(tmp_path)]):
        result = CliRunner().invoke(cli, [*argv, "--image", "web=x:1"])
        assert isinstance(result.exception, UsageError), result.output
        assert "--image goes with a compose file" in str(result.exception)


def test_a_context_outside_the_project_needs_allow_outside(tmp_path: Path) -> None:
    """What the build reads ends up in the package, as what a bind mount packages: the project's files."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "Dockerfile").write_text(DOCKERFILE)
    path = write(tmp_path / "p", "services:\n  web:\n    build: ../shared\n")
    with pytest.raises(UsageError) as caught:
        load(path)
    assert (
        "services.web.build.context" in caught.value.one_line()
        and "--allow-outside" in caught.value.one_line()
    )
    assert build_of(load(path, allow_outside=(shared,)), "web").context == shared
