"""Only trusted images become packages: the containers signature policy, verified by skopeo itself.

Images are signed with a GPG key made for the test (`skopeo copy --sign-by`, simple signing, the
signatures in a lookaside directory that a registries.d file names), pushed to the local registry, and
built under a policy that requires that key for the repository. Sigstore: Debian 12's skopeo 1.9 is
built without sigstore ("Debian-local change: sigstore disabled", in signing and in verification), so
the test proves only that such a requirement refuses with a message saying why; a signed sigstore case
needs a skopeo built with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require
from tests.support.images import build_image, install_busybox
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Signing:
    home: Path  # GNUPGHOME holding the signing key
    fingerprint: str
    public_key: Path
    other_key: Path  # a key that signed nothing here
    registries_d: Path
    lookaside: Path


def _gpg_key(home: Path, name: str) -> str:
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>", "rsa2048",
         "sign", "never"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    listing = subprocess.run(
        ["gpg", "--with-colons", "--list-keys"], env=env, check=True, capture_output=True, text=True
    ).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def _export(home: Path, fingerprint: str, dest: Path) -> Path:
    key = subprocess.run(
        ["gpg", "--export", fingerprint],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=True,
        capture_output=True,
    ).stdout
    dest.write_bytes(key)
    return dest


@pytest.fixture(scope="module")
def signing(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signing]:
    require(shutil.which("gpg") is not None, "gpg is not installed (apt-get install gnupg)")
    work = tmp_path_factory.mktemp("trust")
    fingerprint = _gpg_key(work / "gnupg", "signer")
    other = _gpg_key(work / "gnupg-other", "stranger")
    lookaside = work / "lookaside"
    registries_d = work / "registries.d"
    registries_d.mkdir()
    # Where skopeo writes signatures when it pushes, and reads them when ctr2svc pulls.
    (registries_d / "test.yaml").write_text(
        f"docker:\n  {registry.host}:\n    lookaside: file://{lookaside}\n"
        f"    lookaside-staging: file://{lookaside}\n"
    )
    yield Signing(
        work / "gnupg",
        fingerprint,
        _export(work / "gnupg", fingerprint, work / "signer.gpg"),
        _export(work / "gnupg-other", other, work / "stranger.gpg"),
        registries_d,
        lookaside,
    )
    # gpg started an agent for each home: they go with the test.
    for home in ("gnupg", "gnupg-other"):
        subprocess.run(["gpgconf", "--homedir", str(work / home), "--kill", "all"], check=False)


def push(registry: Registry, signing: Signing, source: str, name: str, *, signed: bool) -> str:
    dest = registry.ref(name, "1.0")
    argv = ["skopeo", "--insecure-policy", "--registries.d", str(signing.registries_d), "copy",
            "--dest-tls-verify=false"]  # fmt: skip
    if signed:
        argv += ["--sign-by", signing.fingerprint]
    subprocess.run(
        [*argv, source, f"docker://{dest}"],
        env={**os.environ, "GNUPGHOME": str(signing.home)},
        check=True,
        capture_output=True,
    )
    return dest


@pytest.fixture(scope="module")
def images(registry: Registry, signing: Signing, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("trust-images")
    source = build_image(work / "layout", "1.0", install_busybox, entrypoint=["/bin/sleep", "1000"])
    other = build_image(work / "layout", "2.0", install_busybox, entrypoint=["/bin/sleep", "2000"])
    signed = push(registry, signing, source, "trusted/app", signed=True)
    # The same signed image copied under another name, signatures and all: its signature names
    # trusted/app, not trusted/copy.
    retagged = registry.ref("trusted/copy", "1.0")
    subprocess.run(
        ["skopeo", "--insecure-policy", "--registries.d", str(signing.registries_d), "copy",
         "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{signed}", f"docker://{retagged}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return {
        "signed": signed,
        "unsigned": push(registry, signing, other, "trusted/unsigned", signed=False),
        "retagged": retagged,
    }


def policy(path: Path, registry: Registry, requirement: dict[str, object]) -> Path:
    path.write_text(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {"docker": {f"{registry.host}/trusted": [requirement]}},
            }
        )
    )
    return path


def signed_by(key: Path) -> dict[str, object]:
    return {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}


def build(tmp_path: Path, ref: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctr2svc", "build", ref, "-o", str(tmp_path / "out"), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "CTR2SVC_CACHE_DIR": str(tmp_path / "cache")},
        cwd=REPO,
        timeout=600,
    )


def inspect(package: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "ctr2svc", "inspect", str(package), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_a_signed_image_builds_and_the_package_names_its_signer(
    registry: Registry, signing: Signing, images: dict[str, str], tmp_path: Path
) -> None:
    rules = policy(tmp_path / "policy.json", registry, signed_by(signing.public_key))
    proc = build(tmp_path, images["signed"], "--policy", rules, "--registries-d", signing.registries_d)
    assert proc.returncode == 0, proc.stderr
    package = Path(proc.stdout.strip())
    record = inspect(package)["image"]
    assert isinstance(record, dict)
    trust = record["trust"]
    assert trust["verified"] is True and trust["scope"] == f"docker:{registry.host}/trusted"
    assert trust["requirements"] == [
        {"type": "signedBy", "keyType": "GPGKeys", "keys": [signing.fingerprint]}
    ]
    assert trust["policy"] == str(rules) and trust["digest"] == record["digest"]
    shown = subprocess.run(
        [sys.executable, "-m", "ctr2svc", "inspect", str(package)], capture_output=True, text=True, cwd=REPO
    ).stdout
    assert f"keys {signing.fingerprint}" in shown and "verified    yes" in shown, shown

    # Cached now; under a policy that trusts another key the same image is verified again, and refused.
    stranger = policy(tmp_path / "stranger.json", registry, signed_by(signing.other_key))
    again = build(tmp_path, images["signed"], "--policy", stranger, "--registries-d", signing.registries_d)
    assert again.returncode == 3, again.stderr
    assert "refused by the signature policy" in again.stderr and str(stranger) in again.stderr
    # The no-op rebuild under the first policy is still one (the record holds the requirement).
    noop = build(tmp_path, images["signed"], "--policy", rules, "--registries-d", signing.registries_d)
    assert noop.returncode == 0 and "unchanged, and so are the options" in noop.stderr, noop.stderr


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("unsigned", "A signature was required, but no signature exists"),
        ("retagged", "is not accepted"),
    ],
)
def test_unsigned_and_retagged_images_are_refused(
    registry: Registry, signing: Signing, images: dict[str, str], tmp_path: Path, image: str, words: str
) -> None:
    rules = policy(tmp_path / "policy.json", registry, signed_by(signing.public_key))
    proc = build(tmp_path, images[image], "--policy", rules, "--registries-d", signing.registries_d)
    assert proc.returncode == 3, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("ctr2svc: error:"))
    assert images[image] in line and "signedBy (GPGKeys)" in line and str(rules) in line and words in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_policy_that_rejects_everything_else(registry: Registry, signing: Signing, tmp_path: Path) -> None:
    """The policy's default applies outside the scopes it names: here, reject."""
    rules = policy(tmp_path / "policy.json", registry, {"type": "insecureAcceptAnything"})
    source = build_image(tmp_path / "layout", "1.0", install_busybox, entrypoint=["/bin/sleep", "1"])
    elsewhere = registry.push(source, "elsewhere/app", "1.0")
    proc = build(tmp_path, elsewhere, "--policy", rules)
    assert proc.returncode == 3 and "default in" in proc.stderr and "reject" in proc.stderr, proc.stderr
    # Inside the named scope anything goes, and the package says nothing was verified.
    inside = registry.push(source, "trusted/anything", "1.0")
    ok = build(tmp_path, inside, "--policy", rules)
    assert ok.returncode == 0, ok.stderr
    trust = inspect(Path(ok.stdout.strip()))["image"]["trust"]  # type: ignore[index]
    assert trust["verified"] is False and trust["requirements"] == [{"type": "insecureAcceptAnything"}]


def test_sigstore_on_debians_skopeo_says_why_it_refuses(
    registry: Registry, signing: Signing, images: dict[str, str], tmp_path: Path
) -> None:
    """Debian 12's skopeo verifies no sigstore signature: the refusal says so instead of blaming the image."""
    public = tmp_path / "cosign.pub"
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    public.write_bytes(
        subprocess.run(["openssl", "pkey", "-pubout"], input=key, capture_output=True, check=True).stdout
    )
    rules = policy(tmp_path / "policy.json", registry, {"type": "sigstoreSigned", "keyPath": str(public)})
    (tmp_path / "rd").mkdir()
    (tmp_path / "rd/sigstore.yaml").write_text(
        f"docker:\n  {registry.host}:\n    use-sigstore-attachments: true\n"
    )
    proc = build(tmp_path, images["signed"], "--policy", rules, "--registries-d", tmp_path / "rd")
    assert proc.returncode == 3, proc.stderr
    assert "sigstoreSigned (public key)" in proc.stderr, proc.stderr
    if "sigstore disabled" in proc.stderr or "without sigstore support" in proc.stderr:
        assert "without sigstore support" in proc.stderr and "signedBy" in proc.stderr
    else:  # a skopeo that verifies sigstore: the image has no sigstore signature
        assert "no signature exists" in proc.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", "is not valid JSON"),
        ('{"transports": {}}', "no 'default' list"),
        ('{"default": [{"type": "trustMe"}]}', "unknown requirement type 'trustMe'"),
        ('{"default": []}', "non-empty list"),
    ],
)
def test_a_broken_policy_is_refused_before_the_registry(tmp_path: Path, content: str, words: str) -> None:
    rules = tmp_path / "policy.json"
    rules.write_text(content)
    # Nothing listens on this port: the policy is refused before any request is made.
    proc = build(tmp_path, "127.0.0.1:9/none/app:1.0", "--policy", rules)
    assert proc.returncode == 2 and words in proc.stderr and str(rules) in proc.stderr, proc.stderr


def test_update_publishes_what_the_policy_accepts_and_names_what_it_refuses(
    registry: Registry, signing: Signing, images: dict[str, str], tmp_path: Path
) -> None:
    """A project file's [defaults] policy applies to every image `update` builds: the signed one is
    published, the unsigned one is refused in the run's table and never reaches the repository."""
    rules = policy(tmp_path / "policy.json", registry, signed_by(signing.public_key))
    project = tmp_path / "ctr2svc.toml"
    project.write_text(
        f'output = "dist"\n[repo]\npath = "repo"\n[defaults]\nformats = ["deb"]\nlayers = "flat"\n'
        f'policy = "{rules}"\nregistries_d = "{signing.registries_d}"\n'
        f'[[image]]\nref = "{images["signed"]}"\nname = "trusted-svc"\n'
        f'[[image]]\nref = "{images["unsigned"]}"\nname = "untrusted-svc"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ctr2svc", "update", "-c", str(project)],
        capture_output=True,
        text=True,
        env={**os.environ, "CTR2SVC_CACHE_DIR": str(tmp_path / "cache")},
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 6, proc.stderr  # some images failed, the others were published
    assert "refused by the signature policy" in proc.stderr and "untrusted-svc" in proc.stderr, proc.stderr
    published = sorted(p.name for p in (tmp_path / "repo").rglob("*.deb"))
    assert published and all(name.startswith("trusted-svc_") for name in published), published


@pytest.mark.parametrize("fmt", ["deb", "rpm", "apk"])
def test_inspect_reads_every_formats_image_record(fmt: str, tmp_path: Path) -> None:
    """`ctr2svc inspect PACKAGE` reads image.json out of a .deb (dpkg-deb), an .rpm (its cpio payload)
    and an .apk (its data stream), without the registry."""
    example = REPO / "examples" / "hello"
    proc = build(tmp_path, f"oci:{example}:1.0", "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    shown = inspect(Path(proc.stdout.strip()))
    record = shown["image"]
    assert isinstance(record, dict) and record["reference"] == f"oci:{example}:1.0"
    assert record["trust"]["digest"] == record["digest"] and "scope" in record["trust"]
    assert str(shown["package"]).startswith("hello-svc ")


def test_inspect_of_a_layer_package_says_what_to_inspect(tmp_path: Path) -> None:
    example = REPO / "examples" / "hello"
    proc = build(tmp_path, f"oci:{example}:1.0", "--layers", "shared", "--json")
    assert proc.returncode == 0, proc.stderr
    layer = json.loads(proc.stdout)["layers"][0]["package"]
    refused = subprocess.run(
        [sys.executable, "-m", "ctr2svc", "inspect", layer], capture_output=True, text=True, cwd=REPO
    )
    assert refused.returncode == 5 and "has no image.json" in refused.stderr, refused.stderr
