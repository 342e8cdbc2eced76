"""Project files and update state that are wrong in every way a hand-edited file can be (issue 13):
one UsageError naming the file and what is wrong, never a traceback or a silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr2svc.apps.project import load, package_name
from ctr2svc.distribution.update import load_state
from ctr2svc.errors import UsageError
from ctr2svc.model import PackageFormat

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
    # Numbers out of range (issue 22): each would pass TOML and fail in a tool or on the host.
    **{
        f"{key} = {value}": (
            images(f'ref = "{R}/v:1"\n{key} = {value}'),
            ["[[image]] 1", f"{key}: {shown} is not"],
            [f"{key} = "],
        )
        for key, value, shown in (
            ("stop_timeout", "0", "0"),
            ("stop_timeout", "-5", "-5"),
            ("stop_timeout", "3601", "3601"),
            ("pids_limit", "-1", "-1"),
            ("pids_limit", "4194305", "4194305"),
            ("pids_limit", "99999999999999999999", "99999999999999999999"),
            ("ready_port", "0", "0"),
            ("ready_port", "65536", "65536"),
            ("health_interval", "0", "0"),
            ("health_interval", "86401", "86401"),
            ("health_retries", "0", "0"),
            ("health_retries", "10001", "10001"),
            ("cpus", "0", "0"),
            ("cpus", "-1.5", "-1.5"),
            ("cpus", "nan", "nan"),
            ("cpus", "inf", "inf"),
            ("cpus", "4097", "4097"),
        )
    },
    "a number out of range in [defaults]": (
        images(f'ref = "{R}/v:1"', head="[defaults]\npids_limit = 5000000\n"),
        ["[defaults]", "pids_limit: 5000000 is not a number of processes (0 to 4194304)"],
        ["pids_limit = "],
    ),
    "uid too large": (
        images(f'ref = "{R}/v:1"\nuser = "4294967295"'),
        ["user: 4294967295 is not a user or group id (0 to 4294967294)"],
        ['user = "999:999"'],
    ),
    "gid too large": (
        images(f'ref = "{R}/v:1"\nuser = "app:99999999999"'),
        ["user: 99999999999 is not a user or group id"],
        [],
    ),
    "keep too large": (
        "[repo]\nkeep = 1001\n" + images(f'ref = "{R}/v:1"'),
        ["[repo]", "keep: 1001 is not a number of versions to keep (1 to 1000)"],
        ["keep = 3"],
    ),
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


def test_numbers_at_their_limits_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ctr2svc.toml"
    path.write_text(
        images(
            f'ref = "{R}/v:1"\nstop_timeout = 3600\npids_limit = 4194304\nready_port = 65535\n'
            'health_interval = 86400\nhealth_retries = 10000\ncpus = 4096\nuser = "4294967294:0"',
            f'ref = "{R}/w:1"\nstop_timeout = 1\npids_limit = 0\nready_port = 1\nhealth_interval = 1\n'
            "health_retries = 1\ncpus = 0.01",
            head="[repo]\nkeep = 1000\n",
        )
    )
    assert [e.settings["pids_limit"] for e in load(path).images] == [4194304, 0]


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


def test_allow_outside_goes_with_a_compose_file(tmp_path: Path) -> None:
    path = tmp_path / "ctr2svc.toml"
    path.write_text(images(f'ref = "{R}/v:1"'))
    with pytest.raises(UsageError, match="--allow-outside goes with a compose file"):
        load(path, (tmp_path,))


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
    from ctr2svc.package.naming import compare

    with pytest.raises(UsageError, match="is not a package version"):
        compare(PackageFormat.RPM, "1.0", version)
