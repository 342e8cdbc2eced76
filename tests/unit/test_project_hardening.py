"""Project files and update state that are wrong in every way a hand-edited file can be (issue 13):
one UsageError naming the file and what is wrong, never a traceback or a silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr2svc.errors import UsageError
from ctr2svc.model import PackageFormat
from ctr2svc.project import load, package_name
from ctr2svc.update import load_state

R = "registry.example.com"


def images(*bodies: str, head: str = "") -> str:
    return head + "".join(f"\n[[image]]\n{body}\n" for body in bodies)


# case: (file text, words in the message, words in the hint)
REFUSED: dict[str, tuple[str, list[str], list[str]]] = {
    "same image twice": (
        images(f'ref = "{R}/valkey:9"', f'ref = "{R}/valkey:9"'),
        ["image 1 and image 2 are the same image", "valkey-svc"],
        ["remove one"],
    ),
    "same image twice, one name given twice": (
        images(f'ref = "{R}/valkey:9"\nname = "kv"', f'ref = "{R}/valkey:9"\nname = "kv"'),
        ["are the same image", "kv"],
        ["remove one"],
    ),
    "derived names clash": (
        images(f'ref = "{R}/a/valkey:9"', f'ref = "{R}/b/web:1"', 'ref = "other.example/x/valkey:8"'),
        [f"image 1 ({R}/a/valkey:9) and image 3 (other.example/x/valkey:8) both make valkey-svc (deb)"],
        ['set name = "..."', 'name = "x-valkey-svc" on image 3'],
    ),
    "explicit name equals a derived one": (
        images(f'ref = "{R}/valkey:9"', f'ref = "{R}/kv:1"\nname = "valkey-svc"'),
        ["image 1", "image 2", "both make valkey-svc (deb)"],
        ["name = "],
    ),
    "same ref, other settings, same name": (
        images(f'ref = "{R}/valkey:9"', f'ref = "{R}/valkey:9"\nmemory = "1G"'),
        ["both make valkey-svc (deb)"],
        ["name = "],
    ),
    "clash in one shared format": (
        images(
            f'ref = "{R}/a/valkey:9"\nformats = ["deb", "apk"]', f'ref = "{R}/b/valkey:9"\nformats = ["apk"]'
        ),
        ["both make valkey-svc (apk)"],
        ["name = "],
    ),
    "name in [defaults]": (
        images(f'ref = "{R}/a:1"', f'ref = "{R}/b:1"', head='[defaults]\nname = "one-svc"\n'),
        ["both make one-svc (deb)"],
        ["name = "],
    ),
    "a format twice": (
        images(f'ref = "{R}/v:1"\nformats = ["rpm", "rpm"]'),
        ["format rpm is listed twice"],
        [],
    ),
    "no formats": (images(f'ref = "{R}/v:1"\nformats = []'), ["formats is empty"], ['formats = ["deb"]']),
    "invalid name": (
        images(f'ref = "{R}/v:1"\nname = "My App"'),
        ["[[image]] 1", "'My App'"],
        ["set name = "],
    ),
    "invalid reference": (images('ref = "Bad Ref"'), ["[[image]] 1", "Bad Ref"], []),
    "no ref": (images('name = "x-svc"'), ["[[image]] 1", "no ref"], ["ref = "]),
    "image is a string": ('image = "x"\n', ["image must be an array of tables"], ["[[image]]"]),
    "image is a table": (f'[image]\nref = "{R}/v:1"\n', ["image must be an array of tables"], ["[[image]]"]),
    "defaults is a string": (
        'defaults = "x"\n' + images(f'ref = "{R}/v:1"'),
        ["defaults must be a table"],
        [],
    ),
    "repo is an array": ("repo = [1]\n" + images(f'ref = "{R}/v:1"'), ["repo must be a table"], []),
    "output empty": ('output = ""\n' + images(f'ref = "{R}/v:1"'), ["output must be a non-empty string"], []),
    "cache_dir a number": ("cache_dir = 1\n" + images(f'ref = "{R}/v:1"'), ["cache_dir must be"], []),
    "keep 0": ("[repo]\nkeep = 0\n" + images(f'ref = "{R}/v:1"'), ["keep = 0 would empty"], ["keep = 1"]),
    "keep negative": ("[repo]\nkeep = -2\n" + images(f'ref = "{R}/v:1"'), ["keep = -2"], []),
    "keep a bool": ("[repo]\nkeep = true\n" + images(f'ref = "{R}/v:1"'), ["keep must be an int"], []),
    "keep a string": ('[repo]\nkeep = "3"\n' + images(f'ref = "{R}/v:1"'), ["keep must be an int"], []),
    "repo path empty": (
        '[repo]\npath = ""\n' + images(f'ref = "{R}/v:1"'),
        ["path must be a non-empty str"],
        [],
    ),
    "unknown repo key": ('[repo]\npaht = "r"\n' + images(f'ref = "{R}/v:1"'), ["unknown key 'paht'"], []),
    "not TOML": ('[[image]]\nref = "x\n', ["is not valid TOML", "line 2"], ["line"]),
    "duplicate TOML key": (images(f'ref = "{R}/v:1"\nref = "{R}/w:1"'), ["is not valid TOML"], []),
    "no images": ('output = "dist"\n', ["no [[image]] tables"], []),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(case: str, tmp_path: Path) -> None:
    text, says, hints = REFUSED[case]
    path = tmp_path / "ctr2svc.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load(path)
    error = caught.value
    assert error.exit_code == 2
    assert str(path) in error.brief
    assert "\n" not in error.one_line()
    assert error.hint
    for word in says:
        assert word in error.brief, error.one_line()
    for word in hints:
        assert word in error.hint, error.one_line()


# case: (raw bytes, words in the message)
UNREADABLE: dict[str, tuple[bytes, list[str]]] = {
    "latin-1 on line 3": (b'output = "dist"\n\n# caf\xe9\n', ["not UTF-8", "line 3", "0xe9"]),
    "UTF-16 with BOM": ('[[image]]\nref = "a/b:1"\n'.encode("utf-16"), ["not UTF-8", "line 1", "0xff"]),
    "a lone continuation byte": (b'[[image]]\nref = "a/b:1\x80"\n', ["not UTF-8", "line 2", "0x80"]),
    "NUL bytes": (b'output = "di\x00st"\n', ["is not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_bytes(case: str, tmp_path: Path) -> None:
    data, says = UNREADABLE[case]
    path = tmp_path / "ctr2svc.toml"
    path.write_bytes(data)
    with pytest.raises(UsageError) as caught:
        load(path)
    line = caught.value.one_line()
    assert str(path) in line and "\n" not in line
    for word in says:
        assert word in line, line


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory, not a project file"):
        load(tmp_path)
    with pytest.raises(UsageError, match="No such file"):
        load(tmp_path / "missing.toml")


def test_accepted(tmp_path: Path) -> None:
    """The controls: one name in different formats, and one image under two names, are distinct
    packages; a name is what `ctr2svc build` would derive."""
    path = tmp_path / "ctr2svc.toml"
    path.write_text(
        images(
            f'ref = "{R}/a/valkey:9"\nformats = ["deb"]',
            f'ref = "{R}/b/valkey:9"\nformats = ["rpm", "apk"]',
            f'ref = "{R}/a/valkey:9"\nname = "valkey-edge"',
            'ref = "oci:examples/hello:1.0"\nformats = ["deb"]',
            head="[repo]\nkeep = 1\n",
        )
    )
    project = load(path)
    assert [package_name(e) for e in project.images] == [
        "valkey-svc",
        "valkey-svc",
        "valkey-edge",
        "hello-svc",
    ]
    assert project.images[1].formats == (PackageFormat.RPM, PackageFormat.APK)
    assert project.keep == 1


# --- update's state file ---------------------------------------------------------------------------

GOOD = {"digest": "sha256:" + "a" * 64, "version": "1.0", "name": "v-svc"}


@pytest.mark.parametrize(
    ("content", "kept", "warns"),
    [
        (None, {}, False),
        (b"", {}, True),
        (b"{not json", {}, True),
        (b"\xff\xfe\x00", {}, True),
        (b"[]", {}, True),
        (b'"text"', {}, True),
        (json.dumps({"v deb": GOOD}).encode(), {"v deb": GOOD}, False),
        (json.dumps({"v deb": GOOD, "w deb": "x", "z rpm": {"digest": 1}}).encode(), {"v deb": GOOD}, True),
    ],
)
def test_damaged_state_is_rebuilt_not_fatal(
    content: bytes | None,
    kept: dict[str, object],
    warns: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if content is not None:
        (tmp_path / "ctr2svc-state.json").write_bytes(content)
    assert load_state(tmp_path) == kept
    assert ("warning:" in capsys.readouterr().err) == warns


def test_state_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ctr2svc-state.json").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        load_state(tmp_path)


@pytest.mark.parametrize("version", ["1.0')); os.exit(3) --", "1.0\n2", "", "$(id)"])
def test_versions_reaching_rpm_eval_are_checked(version: str) -> None:
    """Versions from a hand-edited state file (update's floor) or a crafted package reach `rpm --eval`
    as Lua source: anything outside the formats' grammar is refused first."""
    from ctr2svc.repo import compare

    with pytest.raises(UsageError, match="is not a package version"):
        compare(PackageFormat.RPM, "1.0", version)
