"""The helper as a program: the same bytes in every package, data only in service.env, valid sh."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ctr2svc import runtime
from ctr2svc.model import HealthCheck, PackageFormat, PortMapping
from ctr2svc.service import units
from tests.conftest import require
from tests.unit.test_templates import SHARED, sample_scan

from .conftest import Helper, spec_for

SHELLS = [["dash"], ["busybox", "sh"], ["bash", "--posix"]]


def test_every_package_carries_the_same_helper() -> None:
    """Two services that differ in everything the helper acts on: the same program and awk programs."""
    plain = spec_for()
    other = dataclasses.replace(
        spec_for(name="other-svc", version="7.1"),
        format=PackageFormat.RPM,
        layers=SHARED,
        network="private",
        publish=(PortMapping(8080, 80),),
        health=HealthCheck(("true",), 5, 5, 5, 5),
        runtime="crun",
        stdio="pipe",
        stop_signal="SIGQUIT",
        stop_timeout=3,
    )
    a, b = (
        {f.dest.rsplit("/", 1)[1]: f.content for f in units.service_files(s, sample_scan())}
        for s in (plain, other)
    )
    for name in ("service", "config.awk", "network.awk"):
        assert a[name] == b[name], name
    assert a["service.env"] != b["service.env"]
    assert a["service"] == runtime.program()


def test_no_template_language_in_the_helper() -> None:
    for path in runtime.HERE.iterdir():
        if path.suffix in (".sh", ".awk"):
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, path.name


HOSTILE = {
    "quotes": 'it\'s "quoted" \\ here',
    "substitution": "$(touch SENTINEL) `touch SENTINEL` ${HOME}",
    "newline": "one\ntwo; touch SENTINEL",
    "glob": "* ? [a]",
}


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_service_env_is_data(tmp_path: Path, shell: list[str]) -> None:
    """Every value reads back as it was written, in each shell a host has, and runs nothing; a list
    (the health check's argv) splits into its words exactly."""
    if not shutil.which(shell[0]):
        pytest.skip(f"{shell[0]} is not installed")
    values = {"NAME": "kv-svc", "CONFIG_DIR": "/etc/kv-svc", "GENERATOR": "ctr2svc test", **HOSTILE}
    values = {key.upper(): value for key, value in values.items()}
    values["LIST"] = runtime._words(HOSTILE.values())
    env = tmp_path / "service.env"
    env.write_text(runtime.service_env(values))
    # Nothing but comments and one word per value, KEY=VALUE: an assignment, never a command.
    assert shlex.split(env.read_text(), comments=True) == [f"{key}={value}" for key, value in values.items()]
    script = (
        ". ./service.env\n"
        'for key in QUOTES SUBSTITUTION NEWLINE GLOB; do eval "printf \'%s\\\\0\' \\"\\$$key\\""; done\n'
        'eval "set -- $LIST"\n'
        "printf '%s\\0' \"$@\""
    )
    done = subprocess.run([*shell, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.split("\0")[:-1] == [*HOSTILE.values(), *HOSTILE.values()]
    assert not (tmp_path / "SENTINEL").exists()


def test_service_env_names_what_the_helper_reads() -> None:
    """Each upper-case variable the helper reads is in service.env, set by the helper itself, or one of
    the few it takes from its environment; and every value in service.env is read."""
    program = runtime.program()
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", program))
    assigned = set(re.findall(r"(?:^|\s|\))([A-Z][A-Z0-9_]*)=", program, re.M))
    written = set(runtime.service_values(spec_for(), "k", 0o755, 0, 0))
    # (UNPACKED_ANYWAY: set by apk's pre-upgrade, which carries the snapshot part.)
    environment = {"CTR2SVC_RUNC", "CTR2SVC_NSPAWN", "IFS", "UNPACKED_ANYWAY"}
    assert read <= written | assigned | environment, read - written - assigned - environment
    assert written - {"GENERATOR"} <= read, written - read


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_program_parses(tmp_path: Path, shell: list[str]) -> None:
    if not shutil.which(shell[0]):
        pytest.skip(f"{shell[0]} is not installed")
    program = tmp_path / "service"
    program.write_text(runtime.program())
    subprocess.run([*shell, "-n", str(program)], check=True)


def test_shellcheck_clean() -> None:
    require(shutil.which("shellcheck") is not None, "shellcheck is not installed")
    subprocess.run(["shellcheck", "-"], input=runtime.program(), text=True, check=True)
    # Each part alone too, but for the variables the others define.
    parts = [str(runtime.HERE / part) for part in runtime.PARTS]
    subprocess.run(["shellcheck", "-e", "SC2034,SC2154", *parts], check=True)


def test_a_wrong_command_shows_the_usage(helper: Helper) -> None:
    wrong = helper.run("frobnicate", check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("usage: ") and "prepare|start|run|run-once|stop|cleanup" in wrong.stderr


def test_a_changed_helper_is_a_new_build() -> None:
    """The build record's code digest covers the helper's parts: a fixed helper is not taken for an
    up-to-date package (a no-op rebuild compares it)."""
    from ctr2svc.distribution import record

    names = {name for name, _ in record.code_files()}
    assert {f"runtime/{part}" for part in (*runtime.PARTS, *runtime.AWK_PROGRAMS)} <= names
