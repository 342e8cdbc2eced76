"""ctr2svc.bundle: reading the image's own files as the container sees them, never the build host's."""

from __future__ import annotations

import os
from pathlib import Path

from ctr2svc.image.bundle import image_file, image_path


def _root(tmp_path: Path) -> tuple[Path, Path]:
    """An image root, and a directory of the build host beside it holding a file of its own."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("host:x:4242:4242::/host-home:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/passwd").write_text("app:x:999:999::/data:/bin/sh\n")
    return root, host


def test_links_are_followed_inside_the_image(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    (root / "etc/passwd").symlink_to("/usr/lib/passwd")
    assert image_file(root, "etc/passwd") == b"app:x:999:999::/data:/bin/sh\n"
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("../../../../usr/lib/passwd")
    assert image_file(root, "etc/passwd") == b"app:x:999:999::/data:/bin/sh\n"
    (root / "lib").symlink_to("usr/lib")
    assert image_path(root, "/lib/./passwd") == root / "usr/lib/passwd"


def test_a_link_to_the_build_host_stays_in_the_image(tmp_path: Path) -> None:
    root, host = _root(tmp_path)
    # An absolute link names a path of the image, a relative one stops at its root.
    (root / "etc/passwd").symlink_to(host / "passwd")
    assert image_file(root, "etc/passwd") is None
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to(os.path.relpath(host / "passwd", root / "etc"))
    assert image_file(root, "etc/passwd") is None
    (root / "etc/passwd").unlink()
    (root / "etc").rmdir()
    (root / "etc").symlink_to(host)
    assert image_file(root, "etc/passwd") is None


def test_what_is_not_a_file_is_not_read(tmp_path: Path) -> None:
    root, _ = _root(tmp_path)
    (root / "etc/loop").symlink_to("/etc/loop")
    assert image_path(root, "etc/loop") is None
    assert image_file(root, "etc") is None
    assert image_file(root, "etc/passwd") is None
    (root / "etc/passwd").symlink_to("/etc")
    assert image_file(root, "etc/passwd") is None
    os.mkfifo(root / "etc/group")
    # Not opened: a fifo would block, a device node would be one of this host.
    assert image_file(root, "etc/group") is None
