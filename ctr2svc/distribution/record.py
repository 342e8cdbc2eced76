"""Build records: which package a given image digest and set of options produced.

A rebuild of an unchanged digest with the same options, by the same ctr2svc, would produce the same
package again; the record lets `build` say "up to date" after one manifest request instead of
unpacking and packing. A record only counts while the package it names is still there, unchanged
(same size and modification time), so deleting or replacing the file brings a real build back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ctr2svc import __version__
from ctr2svc.model import InitSystem, ServiceSpec
from ctr2svc.options.request import BuildRequest

# Options that change where things come from or go, not what the package holds.
# The policy and registries.d by what they require of the image (key), not by their paths.
_NOT_IN_KEY = {
    "output_dir", "cache_dir", "creds", "authfile", "tls_verify", "sign_key_file", "policy", "registries_d",
}  # fmt: skip


@dataclass(frozen=True)
class BuildResult:
    """What a build made: enough to report it and to record it in a repository's state."""

    path: Path
    name: str
    version: str
    digest: str
    pinned: str
    service: str
    data_dir: str
    skipped: tuple[tuple[str, str], ...] = ()
    sha256: str = ""  # of the package file, for the summary and for checksums files
    up_to_date: bool = False
    # Shared layers: the layer packages the service package depends on, beside it, bottom first.
    layer_files: tuple[str, ...] = ()
    # The names of those that this build made (the others came from the layer cache).
    built_layers: tuple[str, ...] = ()

    @property
    def files(self) -> list[Path]:
        """Every package file of the build, the service package first."""
        return [self.path, *(Path(p) for p in self.layer_files)]

    @classmethod
    def of(
        cls,
        path: Path,
        spec: ServiceSpec,
        skipped: list[tuple[str, str]],
        layer_files: tuple[str, ...] = (),
        built_layers: tuple[str, ...] = (),
    ) -> BuildResult:
        layout = spec.layout
        service = layout.init_script if spec.init is InitSystem.OPENRC else layout.unit_name
        return cls(
            path,
            spec.name,
            spec.version,
            spec.image.digest,
            spec.image.pinned,
            service,
            layout.data_dir,
            tuple(skipped),
            _file_sha256(path),
            layer_files=layer_files,
            built_layers=built_layers,
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# What a package is made from besides the image and the options: the modules, the service helper's
# shell and awk parts (ctr2svc/runtime), the templates.
CODE_SUFFIXES = (".py", ".sh", ".awk")


def code_files() -> list[tuple[str, Path]]:
    """(name, path) of every file of ctr2svc that shapes a package."""
    package = Path(__file__).resolve().parents[1]  # ctr2svc/, every stage's modules below it
    # Imported here: the unit templates' module is the build's, not the record lookup's.
    from ctr2svc.service.units import templates_dir

    templates = templates_dir()
    files = [
        (str(path.relative_to(package)), path)
        for path in sorted(package.rglob("*"))
        if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts
    ]
    files += [(str(path.relative_to(templates)), path) for path in sorted(templates.rglob("*.j2"))]
    return files


@cache
def code_digest() -> str:
    """ctr2svc's own code and templates: a changed generator must not reuse an old package."""
    digest = hashlib.sha256(__version__.encode())
    for name, path in code_files():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def key(request: BuildRequest, digest: str, trust: dict[str, Any] | None = None) -> str:
    """The identity of a build: image digest, every option that shapes the package, the code."""
    fields = {
        f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in _NOT_IN_KEY
    }
    fields["reference"] = str(fields["reference"])
    doc = {
        "digest": digest,
        # Parsed values (nested dataclasses by their repr): options that mean the same are one build.
        "options": fields,
        "output_dir": str(request.output_dir.resolve()),
        # The key's content, not its path: a new key at the same path is a different package.
        "sign_key": (
            hashlib.sha256(request.sign_key_file.read_bytes()).hexdigest() if request.sign_key_file else None
        ),
        "code": code_digest(),
        "trust": trust,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _path(cache_root: Path, build_key: str) -> Path:
    return cache_root / "builds" / f"{build_key}.json"


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def lookup(cache_root: Path, build_key: str) -> BuildResult | None:
    """The recorded result when its package is still in place, untouched; None otherwise."""
    try:
        doc = json.loads(_path(cache_root, build_key).read_text())
        package = Path(doc["result"]["path"])
        if _stamp(package) != doc["stamp"]:
            return None
        fields = doc["result"]
        fields["path"] = package
        fields["skipped"] = tuple(tuple(s) for s in fields.get("skipped", ()))
        fields["layer_files"] = tuple(fields.get("layer_files", ()))
        fields["built_layers"] = ()
        if not all(Path(p).is_file() for p in fields["layer_files"]):
            return None
        return dataclasses.replace(BuildResult(**fields), up_to_date=True)
    except (OSError, ValueError, KeyError, TypeError):
        # No record, a package gone or changed, or a record from another version: build again.
        return None


def save(cache_root: Path, build_key: str, result: BuildResult) -> None:
    """Record a finished build (atomically: a crash leaves the old record or none)."""
    target = _path(cache_root, build_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    fields = dataclasses.asdict(result)
    fields["path"] = str(result.path.resolve())
    fields["layer_files"] = [str(Path(p).resolve()) for p in result.layer_files]
    fields.pop("up_to_date")
    doc = {"result": fields, "stamp": _stamp(result.path)}
    fd, tmp = tempfile.mkstemp(prefix=".record-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle)
        Path(tmp).replace(target)
    except OSError:
        # A record is an optimisation: failing to write one must not fail the build.
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
