"""What a built package says of its image: its image.json, read from the package file itself, so that a
host admin can tell which image runs and who vouched for it without asking the registry.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from ctr2svc.errors import PackageError
from ctr2svc.model import PackageFormat
from ctr2svc.run import find_tool, run

# /opt/containers/NAME/VERSION/image.json, as tar, cpio and apk name it.
_SUFFIX = "/image.json"
_DEPTH = 5  # opt, containers, NAME, VERSION, image.json


def _ours(name: str) -> bool:
    parts = name.lstrip("./").split("/")
    return name.endswith(_SUFFIX) and len(parts) == _DEPTH and parts[:2] == ["opt", "containers"]


def image_record(path: Path, fmt: PackageFormat, package: str) -> dict[str, Any]:
    """The image.json PATH carries (a service package of ctr2svc's; PACKAGE names it in messages)."""
    if fmt is PackageFormat.DEB:
        dpkg_deb = find_tool("dpkg-deb", "read a .deb")
        data = _from_tar(run([dpkg_deb, "--fsys-tarfile", path], what=f"read {path.name}").stdout)
    elif fmt is PackageFormat.RPM:
        rpm2cpio = find_tool("rpm2cpio", "read an .rpm")
        data = _from_cpio(run([rpm2cpio, path], what=f"read {path.name}").stdout)
    else:
        from ctr2svc.distribution.packages import gzip_streams

        data = None
        for _, plain in gzip_streams(path.read_bytes()):
            data = data or _from_tar(plain)
    if data is None:
        raise PackageError(
            f"{package} has no image.json: it is not a service package of ctr2svc's",
            hint="inspect the service package (a layer package holds only a layer)",
        )
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise PackageError(
            f"{package}: its image.json is not valid JSON", hint="rebuild the package"
        ) from exc
    if not isinstance(record, dict):
        raise PackageError(f"{package}: its image.json is not a JSON object", hint="rebuild the package")
    return record


def _from_tar(blob: bytes) -> bytes | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for member in tar:
                if member.isfile() and _ours(member.name):
                    handle = tar.extractfile(member)
                    return handle.read() if handle is not None else None
    except tarfile.TarError:
        return None
    return None


def _from_cpio(blob: bytes) -> bytes | None:
    """The file out of rpm's payload: cpio's "newc" format, an ASCII header of 13 hex fields, the name
    and the data, each padded to 4 bytes."""
    offset = 0
    while offset + 110 <= len(blob) and blob[offset : offset + 6] in (b"070701", b"070702"):
        fields = [int(blob[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        name_start = offset + 110
        name = blob[name_start : name_start + name_size - 1].decode(errors="replace")
        data_start = (name_start + name_size + 3) & ~3
        if name == "TRAILER!!!":
            return None
        if _ours(name) and size:
            return blob[data_start : data_start + size]
        offset = (data_start + size + 3) & ~3
    return None


def trust_lines(record: dict[str, Any]) -> list[str]:
    """The report's lines on the image's trust."""
    trust = record.get("trust")
    if not isinstance(trust, dict):
        return ["trust       not recorded (built before ctr2svc recorded the signature policy)"]
    lines = [
        f"policy      {trust.get('policy')} ({trust.get('policy_sha256')})",
        f"scope       {trust.get('scope')}",
    ]
    for requirement in trust.get("requirements") or []:
        keys = requirement.get("keys") or []
        identity = (
            requirement.get("signedIdentity", {}).get("type") if requirement.get("signedIdentity") else None
        )
        words = [str(requirement.get("type"))]
        if keys:
            words.append("keys " + ", ".join(map(str, keys)))
        if identity:
            words.append(f"identity {identity}")
        lines.append(f"requires    {'; '.join(words)}")
    verified = (
        "yes: skopeo checked the signatures" if trust.get("verified") else "no: the policy accepts any image"
    )
    lines.append(f"verified    {verified}, digest {trust.get('digest')}")
    return lines


def report(path: Path, package: str, record: dict[str, Any]) -> str:
    lines = [
        f"package     {package} ({path.name})",
        f"image       {record.get('pinned')}",
        f"reference   {record.get('reference')}",
        f"created     {record.get('created') or 'unknown'}",
        f"built by    {record.get('generator')}",
        *trust_lines(record),
    ]
    return "\n".join(lines)
