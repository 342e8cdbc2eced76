"""Which images may become packages: the containers signature policy (containers-policy.json(5)), as
podman and skopeo apply it.

skopeo verifies the signatures itself, on every `skopeo copy` (ctr2svc has no signature code of its
own). What lives here is what skopeo does not tell: the requirement of the policy that applies to an
image (so that a build knows it must ask skopeo even when the image is already cached, and so that the
package can record what it was checked against), and the keys that requirement trusts, by fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr2svc.errors import ImageError, UsageError
from ctr2svc.image.reference import ImageReference, Transport
from ctr2svc.run import run

SYSTEM_POLICY = Path("/etc/containers/policy.json")
# What ctr2svc uses when the host has no policy at all (skopeo would refuse to run): podman's default.
DEFAULT_POLICY: dict[str, Any] = {"default": [{"type": "insecureAcceptAnything"}]}
# Requirements that check something: an image under one of them is verified by skopeo at every build,
# cached or not.
CHECKING = {"signedBy", "sigstoreSigned", "reject"}
REQUIREMENT_TYPES = CHECKING | {"insecureAcceptAnything"}


@dataclass(frozen=True)
class Policy:
    path: Path | None  # None: no file anywhere, DEFAULT_POLICY
    document: dict[str, Any]

    @property
    def source(self) -> str:
        return (
            str(self.path) if self.path is not None else "ctr2svc's default (no /etc/containers/policy.json)"
        )

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Requirement:
    """The policy's requirements for one image: the scope they were found under and what they ask."""

    policy: Policy
    scope: str  # "docker:registry/repo", "oci:" (the transport's default), "default"
    requirements: tuple[dict[str, Any], ...]

    @property
    def checks(self) -> bool:
        return any(r.get("type") in CHECKING for r in self.requirements)

    def describe(self) -> str:
        return "; ".join(_describe(r) for r in self.requirements) or "nothing"

    def record(self, digest: str) -> dict[str, Any]:
        """What the package's image.json says of the image's trust: the requirement that skopeo
        enforced on this digest, the keys it trusts by fingerprint, and the policy it came from."""
        return {
            "policy": self.policy.source,
            "policy_sha256": self.policy.sha256,
            "scope": self.scope,
            "requirements": [_recorded(r, self.policy.path) for r in self.requirements],
            "verified": self.checks,
            "digest": digest,
        }


def load(given: Path | None) -> Policy:
    """The policy a build applies: --policy FILE, else the system's, else podman's default."""
    path = given if given is not None else (SYSTEM_POLICY if SYSTEM_POLICY.exists() else None)
    if path is None:
        return Policy(None, DEFAULT_POLICY)
    what = f"--policy {path}" if given is not None else f"the signature policy {path}"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UsageError(
            f"{what} does not exist", hint="name an existing containers-policy.json file"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what}: {exc}", hint="check the file's permissions") from exc
    except ValueError as exc:
        raise UsageError(
            f"{what} is not valid JSON ({exc})", hint="see containers-policy.json(5) for its format"
        ) from exc
    _check(document, what)
    return Policy(path, document)


def _check(document: Any, what: str) -> None:
    hint = "see containers-policy.json(5): a 'default' list of requirements, and 'transports'"
    if not isinstance(document, dict) or not isinstance(document.get("default"), list):
        raise UsageError(f"{what} has no 'default' list of requirements", hint=hint)
    lists = [document["default"]]
    transports = document.get("transports", {})
    if not isinstance(transports, dict) or not all(isinstance(s, dict) for s in transports.values()):
        raise UsageError(f"{what}: 'transports' is not a map of transports to scopes", hint=hint)
    for scopes in transports.values():
        lists.extend(scopes.values())
    for requirements in lists:
        if not isinstance(requirements, list) or not requirements:
            raise UsageError(f"{what}: every scope needs a non-empty list of requirements", hint=hint)
        for requirement in requirements:
            kind = requirement.get("type") if isinstance(requirement, dict) else None
            if kind not in REQUIREMENT_TYPES:
                raise UsageError(
                    f"{what}: unknown requirement type {kind!r}",
                    hint=f"use one of {', '.join(sorted(REQUIREMENT_TYPES))}",
                )


def requirement(policy: Policy, ref: ImageReference, pinned: ImageReference | None = None) -> Requirement:
    """The requirements skopeo applies to the image it copies: PINNED (the reference by digest that
    ctr2svc pulls) or REF. Scopes as containers-policy.json(5) orders them: for docker, the repository
    with its tag or digest, the repository, each enclosing namespace, the host, the wildcard domains,
    the transport's "" scope; for the local transports, the path and each directory above it; then
    `default`."""
    image = pinned or ref
    scopes: dict[str, Any] = (policy.document.get("transports") or {}).get(str(image.transport), {})
    for scope in _candidates(image):
        if scope in scopes:
            label = f"{image.transport}:{scope}" if scope else f"{image.transport}: (the transport's default)"
            return Requirement(policy, label, tuple(scopes[scope]))
    return Requirement(policy, "default", tuple(policy.document["default"]))


def _candidates(ref: ImageReference) -> list[str]:
    if ref.transport is Transport.DOCKER:
        name = ref.name
        found = []
        if ref.digest:
            found.append(f"{name}@{ref.digest}")
        elif ref.tag:
            found.append(f"{name}:{ref.tag}")
        parts = name.split("/")
        found += ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
        host = parts[0].split(":")[0]
        labels = host.split(".")
        found += ["*." + ".".join(labels[n:]) for n in range(1, len(labels))]
        return [*found, ""]
    path = str(Path(ref.name).absolute())
    found = [f"{path}:{ref.tag}"] if ref.tag else []
    found.append(path)
    found += [str(p) for p in Path(path).parents]
    return [*found, ""]


def _describe(requirement: dict[str, Any]) -> str:
    kind = requirement.get("type")
    if kind == "signedBy":
        return f"signedBy ({requirement.get('keyType', 'GPGKeys')})"
    if kind == "sigstoreSigned":
        return "sigstoreSigned (" + ("Fulcio certificate" if "fulcio" in requirement else "public key") + ")"
    return str(kind)


def _recorded(requirement: dict[str, Any], policy_path: Path | None) -> dict[str, Any]:
    """REQUIREMENT as the package records it: its type and identity rule, and its keys as fingerprints
    rather than as paths on the build host (which mean nothing on the hosts that install it)."""
    kept = {k: v for k, v in requirement.items() if k not in ("keyPath", "keyPaths", "keyData")}
    keys = _key_blobs(requirement, policy_path)
    if requirement.get("type") == "signedBy":
        kept["keys"] = [fpr for blob in keys for fpr in gpg_fingerprints(blob)]
    elif requirement.get("type") == "sigstoreSigned" and keys:
        kept["keys"] = [public_key_id(blob) for blob in keys]
    return kept


def _key_blobs(requirement: dict[str, Any], policy_path: Path | None) -> list[bytes]:
    blobs = []
    if isinstance(requirement.get("keyData"), str):
        blobs.append(base64.b64decode(requirement["keyData"]))
    paths = [requirement["keyPath"]] if isinstance(requirement.get("keyPath"), str) else []
    paths += [p for p in requirement.get("keyPaths") or [] if isinstance(p, str)]
    for given in paths:
        path = Path(given)
        if not path.is_absolute() and policy_path is not None:
            path = policy_path.parent / path
        try:
            blobs.append(path.read_bytes())
        except OSError as exc:
            raise ImageError(
                f"the signature policy names the key {given}, which cannot be read: {exc.strerror}",
                hint="fix the key's path in the policy file",
            ) from exc
    return blobs


def gpg_fingerprints(blob: bytes) -> list[str]:
    """The fingerprints of the OpenPGP keys in BLOB (gpg --show-keys reads it without a keyring);
    its SHA-256 when gpg is not installed, so that the record still names the key."""
    gpg = shutil.which("gpg")
    if gpg is None:
        return ["sha256:" + hashlib.sha256(blob).hexdigest()]
    # An empty home of its own: the key is read, never imported into anybody's keyring.
    with tempfile.TemporaryDirectory(prefix="ctr2svc-gpg-") as home:
        proc = run(
            [gpg, "--batch", "--no-options", "--with-colons", "--show-keys"],
            input=blob,
            env={"GNUPGHOME": home, "PATH": "/usr/bin:/bin"},
            timeout=30,
            what="read the policy's GPG key",
            check=False,
        )
    fingerprints = []
    primary = False
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints or ["sha256:" + hashlib.sha256(blob).hexdigest()]


def public_key_id(blob: bytes) -> str:
    """A sigstore public key (PEM) by the SHA-256 of its DER form, as cosign names keys."""
    text = blob.decode(errors="replace")
    body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=False)
    except ValueError:
        der = blob
    return "sha256:" + hashlib.sha256(der).hexdigest()


# skopeo's words for a policy refusal (containers/image's PolicyRequirementError and its wrapping).
_REJECTED = ("Source image rejected", "is rejected by policy")
_NO_SIGSTORE = "sigstore disabled"


def refusal(stderr: str, ref: ImageReference, digest: str, checked: Requirement) -> ImageError | None:
    """The build's one-line refusal when skopeo's failure (STDERR) was the signature policy's; None
    for any other failure."""
    if not any(word in stderr for word in _REJECTED):
        return None
    reason = _last_words(stderr)
    where = f"{checked.scope} in {checked.policy.source}"
    if _NO_SIGSTORE in stderr:
        return ImageError(
            f"{ref} cannot be verified: the signature policy ({where}) requires {checked.describe()}, and "
            "this host's skopeo is built without sigstore support (Debian's 1.9 refuses every sigstore "
            "signature)",
            hint="require GPG signatures (signedBy) for it, or build on a host whose skopeo verifies "
            "sigstore signatures",
        )
    return ImageError(
        f"{ref} ({digest}) is refused by the signature policy: {where} requires {checked.describe()}; "
        f"skopeo: {reason}",
        hint="sign the image with a key that scope trusts, fix the policy, or name another with --policy",
    )


def _last_words(stderr: str) -> str:
    for line in reversed(stderr.strip().splitlines()):
        text = line.strip()
        if 'msg="' in text:
            text = text.split('msg="', 1)[1].rsplit('"', 1)[0]
        if text:
            return text.replace("Source image rejected: ", "")
    return "rejected"
