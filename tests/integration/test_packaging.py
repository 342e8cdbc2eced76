"""ctr2svc itself as a .deb and an .rpm (packaging/build, docs/packaging.md), checked by the real tools.

Two builds of the checkout are byte-identical; lintian has nothing to say about the .deb (every tag it
would report is overridden in the package with its reason); rpm reads the .rpm's Requires and files
back. The .deb is installed on this host with apt (its Depends come from Debian's mirror), the installed
/usr/bin/ctr2svc builds the example image with the nfpm it bundles and publishes itself into a
repository that apt reads, and the host is left as it was: ctr2svc and whatever apt installed for it
are purged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctr2svc import __version__
from tests.conftest import REPO, require
from tests.integration.helpers import dpkg_installed, sh
from tests.integration.test_repo import Apt

pytestmark = pytest.mark.integration

BUILD = REPO / "packaging" / "build"
DEB = f"ctr2svc_{__version__}_amd64.deb"
RPM = f"ctr2svc-{__version__}-1.x86_64.rpm"
MAINTAINER = "Ops <ops@example.com>"
# What the installed ctr2svc sees: no venv on PATH, so that only the package's own tools can be found.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# dpkg's lock may be held by another test's install: wait for it rather than fail.
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]

# rpmlint 2.4's findings on the .rpm, each with why it stays and where it may be (a pattern on its
# argument); anything else fails the test.
BUNDLED = r"/usr/lib/ctr2svc/bin/(nfpm|docker-compose)"
TEMPLATE = r"/usr/lib/ctr2svc/ctr2svc/templates/\S+\.j2 644 \S+"
RPMLINT_ACCEPTED: dict[str, tuple[str, str | None]] = {
    "statically-linked-binary": ("upstream's static Go release builds, bundled unmodified", BUNDLED),
    "position-independent-executable-suggested": ("the same bundled Go binaries", BUNDLED),
    "unstripped-binary-or-object": ("docker-compose as Docker publishes it", r"\S+/docker-compose"),
    "non-executable-script": (
        "Jinja templates of the scripts ctr2svc writes into packages: data, rendered before they run",
        TEMPLATE,
    ),
    "invalid-license": ("SPDX names: Debian's rpmlint 2.4 knows only Fedora's old short names", r"\S+"),
    "no-url-tag": ("ctr2svc has no public home page to name yet", None),
    "no-signature": ("packaging/build does not sign; a repository's signature covers its indexes", None),
    "manpage-not-compressed": (
        "rpmlint's default configuration wants bzip2; Fedora compresses man pages with gzip",
        r"bz2 /usr/share/man/man1/ctr2svc\.1\.gz",
    ),
    "no-manual-page-for-binary": (
        "the same configuration: it does not see the .gz man page, which is there",
        r"ctr2svc",
    ),
}


@dataclass(frozen=True)
class Built:
    first: Path
    second: Path


def build(out: Path, *args: str) -> list[Path]:
    proc = subprocess.run(
        [BUILD, "--maintainer", MAINTAINER, *args, "-o", out],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return [Path(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, integration_host: None) -> Built:
    base = tmp_path_factory.mktemp("packaging")
    first, second = base / "first", base / "second"
    assert build(first) == [first / DEB, first / RPM]
    assert build(second) == [second / DEB, second / RPM]
    return Built(first, second)


def test_two_builds_are_byte_identical(built: Built) -> None:
    for name in (DEB, RPM):
        sh("cmp", built.first / name, built.second / name)
    # Nothing but the packages in the output directory: the work is done elsewhere.
    assert sorted(p.name for p in built.first.iterdir()) == sorted([DEB, RPM])


def test_lintian_has_nothing_to_say(built: Built) -> None:
    require(shutil.which("lintian") is not None, "lintian is not installed (scripts/bootstrap --test)")
    proc = sh("lintian", "-I", "--fail-on", "error,warning", "--tag-display-limit", "0", built.first / DEB)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPXC]: ", line)]
    assert tags == [], proc.stdout


def test_deb_control_and_files(built: Built) -> None:
    fields = sh("dpkg-deb", "-f", built.first / DEB, "Depends", "Suggests", "Architecture").stdout
    depends = "python3 (>= 3.11), python3-click (>= 8.1), python3-jinja2 (>= 3.1), skopeo, umoci"
    assert f"Depends: {depends}," in fields
    assert "Architecture: amd64" in fields
    # runc is for the hosts that run the services the builder makes: only suggested.
    assert re.search(r"^Suggests: .*\brunc\b", fields, re.MULTILINE), fields
    files = sh("dpkg-deb", "-c", built.first / DEB).stdout
    for path in (
        "./usr/bin/ctr2svc",
        "./usr/lib/ctr2svc/bin/nfpm",
        "./usr/lib/ctr2svc/bin/docker-compose",
        "./usr/lib/ctr2svc/ctr2svc/cli.py",
        "./usr/lib/ctr2svc/ctr2svc/templates/service.unit.j2",
        "./usr/share/doc/ctr2svc/copyright",
        "./usr/share/doc/ctr2svc/changelog.gz",
        "./usr/share/man/man1/ctr2svc.1.gz",
        "./usr/share/lintian/overrides/ctr2svc",
    ):
        assert re.search(rf" {re.escape(path)}$", files, re.MULTILINE), path
    assert "__pycache__" not in files


def test_rpm_requires_and_files(built: Built) -> None:
    require(shutil.which("rpm") is not None, "rpm is not installed (apt-get install rpm)")
    rpm = built.first / RPM
    requires = sh("rpm", "-qp", "--requires", rpm).stdout.splitlines()
    wanted = ["python3 >= 3.11", "python3-click >= 8.1", "python3-jinja2 >= 3.1", "skopeo", "umoci", "zstd"]
    assert [r for r in requires if not r.startswith("rpmlib(")][: len(wanted)] == wanted
    assert "runc" in sh("rpm", "-qp", "--suggests", rpm).stdout.split()
    assert sh("rpm", "-qp", "--qf", "%{ARCH} %{LICENSE}", rpm).stdout == "x86_64 Apache-2.0 AND MIT"
    files = set(sh("rpm", "-qpl", rpm).stdout.splitlines())
    assert {
        "/usr/bin/ctr2svc",
        "/usr/lib/ctr2svc",
        "/usr/lib/ctr2svc/bin/nfpm",
        "/usr/lib/ctr2svc/bin/docker-compose",
        "/usr/lib/ctr2svc/ctr2svc/templates/service.unit.j2",
        "/usr/share/licenses/ctr2svc/copyright",
    } <= files
    # The package owns its own directories and no system one (filesystem's /usr/bin, /usr/lib).
    assert not files & {"/usr", "/usr/bin", "/usr/lib", "/usr/share/man/man1"}
    if shutil.which("rpmlint") is None:
        return
    proc = sh("rpmlint", rpm, check=False)
    assert "1 packages and 0 specfiles checked" in proc.stdout, proc.stdout + proc.stderr
    findings = [
        parts[2].partition(" ")[::2]
        for parts in (line.split(": ", 2) for line in proc.stdout.splitlines())
        if len(parts) == 3 and parts[1] in ("E", "W")
    ]
    unexplained = [f"{code} {argument}" for code, argument in findings if not accepted(code, argument)]
    assert unexplained == [], "\n".join(unexplained)


def accepted(code: str, argument: str) -> bool:
    reason = RPMLINT_ACCEPTED.get(code)
    return reason is not None and (reason[1] is None or re.fullmatch(reason[1], argument.strip()) is not None)


def installed_packages() -> set[str]:
    return set(sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n").stdout.split("\n"))


@pytest.fixture
def installed(built: Built) -> Iterator[Path]:
    """The .deb installed with apt on this host; afterwards ctr2svc and what apt brought for it are gone."""
    require(not dpkg_installed("ctr2svc"), "ctr2svc is installed on this host already")
    before = {line.split()[-1] for line in installed_packages() if line.startswith("ii")}
    try:
        proc = sh(*APT, "install", "--no-install-recommends", built.first / DEB, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield Path("/usr/bin/ctr2svc")
    finally:
        sh(*APT, "purge", "ctr2svc", check=False)
        after = {line.split()[-1] for line in installed_packages() if line.startswith("ii")}
        automatic = set(sh("apt-mark", "showauto").stdout.split())
        # Only what this install brought and apt marked as a dependency: nothing another test installed.
        brought = sorted((after - before) & automatic)
        if brought:
            sh(*APT, "purge", *brought, check=False)
    assert not dpkg_installed("ctr2svc")
    assert not Path("/usr/lib/ctr2svc").exists()


def test_installed_builder_builds_and_publishes(installed: Path, built: Built, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
        "PATH": SYSTEM_PATH,
        "CTR2SVC_CACHE_DIR": str(tmp_path / "cache"),
    }

    def ctr2svc(*args: str | Path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [installed, *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    assert ctr2svc("--version").stdout.strip() == f"ctr2svc, version {__version__}"
    example = f"oci:{REPO / 'examples' / 'hello'}:1.0"
    out = tmp_path / "out"
    proc = ctr2svc("--debug", "build", example, "--maintainer", MAINTAINER, "-o", out)
    deb = Path(proc.stdout.strip())
    assert deb.parent == out and deb.name.endswith("_amd64.deb"), proc.stdout
    assert "hello-svc" in sh("dpkg-deb", "-f", deb, "Package").stdout
    # The installed program is the package's code, packing with the nfpm it bundles.
    assert "+ /usr/lib/ctr2svc/bin/nfpm package" in proc.stderr, proc.stderr[-2000:]
    assert f"{REPO}/ctr2svc" not in proc.stderr

    # The fleet story: the builder publishes itself beside the services, and apt sees it there.
    repo = tmp_path / "repo"
    ctr2svc("repo", "add", repo, built.first / DEB, built.first / RPM, deb)
    packages = (repo / "deb" / "Packages").read_text()
    assert "Package: ctr2svc\n" in packages and "Package: hello-svc\n" in packages
    assert (repo / "rpm" / RPM).exists()
    apt = Apt(tmp_path / "apt")
    apt.sources.write_text(f"deb [trusted=yes] file:{repo / 'deb'} ./\n")
    sh("apt-get", *apt.options(), "update")
    assert apt.candidate("ctr2svc") == __version__


def test_a_failure_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [BUILD, "-o", out],
        capture_output=True,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "yesterday"},
        check=False,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "packaging/build: error: SOURCE_DATE_EPOCH='yesterday' is not a number of seconds "
        "(hint: set it to a Unix time such as 1700000000, or unset it)"
    ]
    assert not out.exists()
