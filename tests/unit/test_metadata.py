"""What reaches package metadata: one line, no control characters, "$" kept from nfpm's expansion."""

from __future__ import annotations

import pytest

from ctr2svc import metadata
from ctr2svc.errors import ImageError, UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Evil\nDepends: evil-pkg", "Evil Depends: evil-pkg"),
        ("tab\there\r\nand\x00nul\x1b[31m", "tab here and nul [31m"),
        ("line\u2028separator\x85next", "line separator next"),
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert metadata.one_line(text) == expected


def test_summary_is_cut_on_a_word() -> None:
    text = "word " * 40
    cut = metadata.summary(text)
    assert len(cut) <= metadata.SUMMARY_LIMIT and cut.endswith("word…")


@pytest.mark.parametrize(
    "value",
    ["x <a@b.c>\nDepends: evil", "nobody", "<a@b.c>", "x <a@b.c> trailing", "x <no-at-sign>", "x\t<a@b.c>"],
)
def test_bad_maintainers_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="--maintainer"):
        metadata.maintainer(value)


@pytest.mark.parametrize(
    "value", ["ctr2svc <root@localhost>", "Ops Team <ops@example.com>", "Zoë <z@ex.org>"]
)
def test_good_maintainers_pass(value: str) -> None:
    assert metadata.maintainer(value) == value


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"DEBFULLNAME": "Ada Ops", "DEBEMAIL": "ada@example.com"}, "Ada Ops <ada@example.com>"),
        ({"DEBEMAIL": "Ada Ops <ada@example.com>", "DEBFULLNAME": "Ignored"}, "Ada Ops <ada@example.com>"),
        ({"NAME": "Bo", "EMAIL": "bo@example.com"}, "Bo <bo@example.com>"),
        # dch's order: DEBEMAIL before EMAIL, DEBFULLNAME before NAME.
        ({"NAME": "Bo", "DEBFULLNAME": "Ada", "EMAIL": "b@x.org", "DEBEMAIL": "a@x.org"}, "Ada <a@x.org>"),
        ({"DEBFULLNAME": "Ada", "DEBEMAIL": "  "}, None),
    ],
)
def test_maintainer_from_the_environment_as_dch_takes_it(
    environ: dict[str, str], expected: str | None
) -> None:
    assert metadata.maintainer_from_environment(environ) == expected


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"DEBEMAIL": "ada@example.com"}, "DEBEMAIL=.* no name"),
        ({"EMAIL": "Ada <ada@example.com>\nDepends: evil"}, "EMAIL .*control characters"),
        ({"DEBFULLNAME": "Ada", "DEBEMAIL": "not-an-address"}, "DEBFULLNAME and DEBEMAIL .* is not"),
    ],
)
def test_a_bad_maintainer_in_the_environment_names_its_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        metadata.maintainer_from_environment(environ)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Ada Ops <ada@example.com>", "Ada Ops <ada@example.com>"),
        ("Ada <a@x.org>, Bo <b@x.org>", None),
        ("https://github.com/docker-library/postgres", None),
        (None, None),
    ],
)
def test_maintainer_from_the_authors_label_only_when_it_is_one(
    label: str | None, expected: str | None
) -> None:
    assert metadata.maintainer_from_label(label) == expected


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://example.com/$HOME/x?a=1&b=%20", True),
        ("http://example.com/\nExecStartPre=/bin/evil", False),
        ("javascript:alert(1)", False),
        ("https://exa mple.com", False),
        ("ftp://example.com", False),
    ],
)
def test_homepage(url: str, kept: bool) -> None:
    assert (metadata.homepage(url, "url") == url) is kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("MIT", True),
        ("Apache-2.0 OR MIT", True),
        ("GPL-2.0-or-later WITH x", True),
        ("MIT\nDepends: x", False),
    ],
)
def test_license(text: str, kept: bool) -> None:
    assert (metadata.license_expression(text) == text) is kept


def test_nfpm_text_escapes_every_dollar() -> None:
    assert metadata.nfpm_text("a $HOME ${X} $$") == "a ${CTR2SVC_DOLLAR}HOME ${CTR2SVC_DOLLAR}{X} " + (
        "${CTR2SVC_DOLLAR}" * 2
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/data", "/data"),
        ("/../../../../etc", "/etc"),
        ("/data/../../var/lib/x", "/var/lib/x"),
        ("data/", "/data"),
        ("//double//slash/", "/double/slash"),
        ("/", "/"),
    ],
)
def test_volume_paths_are_cleaned_as_docker_cleans_them(path: str, expected: str) -> None:
    assert metadata.volume_path(path) == expected


def test_volume_paths_with_control_characters_are_image_errors() -> None:
    with pytest.raises(ImageError, match="VOLUME"):
        metadata.volume_path("/data\nevil")


@pytest.mark.parametrize("value", ["../x.pub", "a/b", "", "-rf", "a b", "x\n"])
def test_file_names(value: str) -> None:
    with pytest.raises(UsageError):
        metadata.file_name("--sign-key-name", value, "hint")
