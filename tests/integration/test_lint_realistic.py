"""Debian's and Fedora's package checkers on packages of realistic images (issues 16 and 22): lintian
with no error or warning left and no override unused, every rpmlint finding accounted for,
`systemd-analyze verify` silent on the units.

The images are tests/support/realistic.py's (built once, cached): the plain Debian 12 base (setuid
passwd, su, mount; setgid chage; static-pie ldconfig; /tmp and /run/lock 1777; a volume owned by uid
1000) and PostgreSQL (its user 999, a data dir of mode 1777, gosu: a static Go binary), on which the
overrides were first written; and three the overrides were not written for: nginx (perl, iproute2's
python script with no python in the image), Apache httpd and a Python app (python3.11's scripts, an
interpreter in /usr/local, a binary without PIE). The Debian image is built flat, with shared layers
and with shared layers for OpenRC; nginx flat and with shared layers; PostgreSQL, httpd and the
Python app with shared layers (their flat packages hold the same files as the base and their layer
package, which are checked, and would take lintian minutes more). A package built twice (a layer
package is the same file in every build that has the layer) is checked once: by its content, not its
name, which an image's service packages flat and with shared layers share.

What is left is overridden in the package itself only where the tag is wrong for this kind of package
(ctr2svc/package/debian.py, each with its reason) and only for the tags the image's files raise
(ctr2svc/package/imagelint.py), or listed in RPMLINT_ACCEPTED* (tests/integration/helpers.py) with its
reason and where it may appear.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, require
from tests.support import realistic
from tests.support.registry import Registry

from .helpers import RPMLINT_ACCEPTED, RPMLINT_ACCEPTED_REAL_IMAGES, rpmlint, sh, unexplained
from .helpers import lintian as run_lintian

pytestmark = pytest.mark.integration

MAINTAINER = "Ops <ops@example.com>"
ACCEPTED = {**RPMLINT_ACCEPTED, **RPMLINT_ACCEPTED_REAL_IMAGES}


@dataclass(frozen=True)
class Variant:
    image: str
    format: str
    args: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return "-".join([self.image, self.format, *(a.lstrip("-") for a in self.args)])

    @property
    def systemd(self) -> bool:
        return self.format == "deb" and "openrc" not in self.args


SHARED = ("--layers", "shared")
VARIANTS = (
    Variant("debian", "deb"),
    Variant("debian", "deb", SHARED),
    Variant("debian", "deb", (*SHARED, "--init", "openrc")),
    Variant("postgres", "deb", SHARED),
    Variant("nginx", "deb"),
    Variant("nginx", "deb", SHARED),
    Variant("httpd", "deb", SHARED),
    Variant("pyapp", "deb", SHARED),
    Variant("debian", "rpm"),
    Variant("postgres", "rpm", SHARED),
)


@dataclass(frozen=True)
class Built:
    packages: dict[str, list[Path]]  # variant id -> the service package, then its layer packages
    lintian: dict[Path, tuple[list[str], str]]  # .deb -> its E:/W: lines and unused overrides, output
    rpmlint: dict[Path, list[tuple[str, str]]]  # .rpm -> rpmlint's (code, argument)


def lintian(deb: Path) -> tuple[list[str], str]:
    return run_lintian(deb, timeout=1200)  # a whole Debian tree takes minutes


@pytest.fixture(scope="module")
def built(
    registry: Registry, ctr2svc: Cli, tmp_path_factory: pytest.TempPathFactory, integration_host: None
) -> Built:
    missing = realistic.missing_requirements()
    require(not missing, f"cannot build the realistic images: {', '.join(missing)}")
    for tool, package in (("lintian", "lintian"), ("rpmlint", "rpmlint"), ("systemd-analyze", "systemd")):
        require(shutil.which(tool) is not None, f"{tool} is not installed (apt-get install {package})")
    work = tmp_path_factory.mktemp("lint-realistic")
    refs = {
        image: registry.push(realistic.build(image), f"lint/{image}", "1")
        for image in sorted({v.image for v in VARIANTS})
    }
    packages: dict[str, list[Path]] = {}
    for variant in VARIANTS:
        out = work / variant.id
        summary = json.loads(
            ctr2svc(
                "build",
                refs[variant.image],
                "--format",
                variant.format,
                "--maintainer",
                MAINTAINER,
                *variant.args,
                "--json",
                "-o",
                out,
            ).stdout
        )
        packages[variant.id] = [Path(summary["package"]), *(Path(x["package"]) for x in summary["layers"])]

    # Each package once, by content (a layer package is the same file in every build; the service
    # packages of one image flat and shared have one name and other contents), two at a time, largest
    # first: lintian and rpmlint take a core each, and minutes on a large image tree.
    digests = {path: file_digest(path) for paths in packages.values() for path in paths}
    unique = sorted(
        {digest: path for path, digest in digests.items()}.items(), key=lambda i: -i[1].stat().st_size
    )
    home = work / "home"  # for rpm -K inside rpmlint: no keys or macros of this host's root
    home.mkdir()
    debs: dict[str, Future[tuple[list[str], str]]] = {}
    rpms: dict[str, Future[list[tuple[str, str]]]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for digest, path in unique:
            if path.suffix == ".deb":
                debs[digest] = pool.submit(lintian, path)
            else:
                rpms[digest] = pool.submit(rpmlint, path, home)
        return Built(
            packages,
            {path: debs[digest].result() for path, digest in digests.items() if digest in debs},
            {path: rpms[digest].result() for path, digest in digests.items() if digest in rpms},
        )


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


DEBS = [v for v in VARIANTS if v.format == "deb"]


@pytest.mark.parametrize("variant", DEBS, ids=[v.id for v in DEBS])
def test_lintian_is_clean(variant: Variant, built: Built) -> None:
    debs = built.packages[variant.id]
    # Shared: the service package and one package per image layer (the base, and the image's own).
    assert len(debs) == (3 if SHARED[0] in variant.args else 1), debs
    # E:/W: lines and unused overrides, by package (lintian's whole output is long with -I).
    failed = [f"{deb.name}: {line}" for deb in debs for line in built.lintian[deb][0]]
    assert not failed, "\n".join(failed)


def test_rpmlint_findings_are_all_accounted_for(built: Built) -> None:
    seen: set[str] = set()
    for rpm, findings in built.rpmlint.items():
        # The packages here are unsigned; test_rpm.py checks that signing removes exactly this finding.
        findings = [(code, arg) for code, arg in findings if code != "no-signature"]
        bad = unexplained(findings, ACCEPTED)
        assert not bad, f"rpmlint on {rpm.name}:\n" + "\n".join(bad)
        seen |= {code for code, _ in findings}
    # rpmlint did look at the image trees, and nothing is accepted for real images that no longer occurs.
    assert set(RPMLINT_ACCEPTED_REAL_IMAGES) <= seen, sorted(set(RPMLINT_ACCEPTED_REAL_IMAGES) - seen)


SYSTEMD_DEBS = [v for v in DEBS if v.systemd]


@pytest.mark.parametrize("variant", SYSTEMD_DEBS, ids=[v.id for v in SYSTEMD_DEBS])
def test_systemd_analyze_verify(variant: Variant, built: Built, tmp_path: Path) -> None:
    """The service package's units in a root of their own: the package's files (not the image tree),
    the host's system units (the targets they name) and /bin/sh (the health unit's ExecStopPost)."""
    deb = built.packages[variant.id][0]
    root = tmp_path / "root"
    root.mkdir()
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    subprocess.run(
        ["tar", "-x", "-C", str(root), "--wildcards", "--exclude=./opt/containers/*/rootfs"],
        input=tar,
        check=True,
    )
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True
    )
    (root / "usr/bin").mkdir(exist_ok=True)
    shutil.copy2("/usr/bin/sh", root / "usr/bin/sh", follow_symlinks=True)
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    name = deb.name.split("_", 1)[0]
    units = sorted((root / "lib/systemd/system").glob(f"{name}*"))
    assert root / f"lib/systemd/system/{name}.service" in units, units
    verify = sh("systemd-analyze", "verify", f"--root={root}", "--man=no", *units, check=False)
    # It exits 0 on unknown keys and bad values, which it reports on stderr only.
    assert verify.returncode == 0 and verify.stderr == "", verify.stdout + verify.stderr
