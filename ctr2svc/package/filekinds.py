"""What an image's file is, as lintian tells (for imagelint.py): an ELF file's headers as file(1) and
readelf describe them (its type, interpreter, NEEDED, SONAME, RUNPATH, RELRO, a symbol table), a
script's `#!` line, and the interpreters lintian knows, plain and versioned.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

# ELF (elf.h)
ET_EXEC, ET_DYN = 2, 3


PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_GNU_RELRO = 1, 2, 3, 0x6474E552


DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FLAGS_1 = 1, 5, 14, 15, 29, 0x6FFFFFFB


DF_1_PIE = 0x08000000


SHT_SYMTAB = 2


@dataclass(frozen=True)
class Elf:
    kind: str  # file(1)'s word: "executable", "pie executable", "shared object" or "other"
    interp: bool
    needed: tuple[str, ...]
    soname: bool
    search_path: tuple[str, ...]  # RPATH and RUNPATH entries
    relro: bool
    unstripped: bool  # file(1)'s "not stripped": a symbol table

    @property
    def linked(self) -> bool:
        """An executable or a shared object, as lintian's binaries checks want them."""
        return self.kind in ("executable", "pie executable", "shared object")

    @property
    def shared(self) -> bool:
        return self.kind in ("pie executable", "shared object")


def read_elf(path: Path) -> Elf | None:
    """The ELF file at PATH as file(1) and readelf describe it; None when it is not one."""
    try:
        return parse_elf(path.read_bytes())
    except OSError:
        return None


def parse_elf(data: bytes) -> Elf | None:
    """None when DATA is not an ELF file, or one whose headers lie beyond its end."""
    try:
        return _elf_headers(data)
    except (struct.error, IndexError, ValueError):
        return None


def _elf_headers(data: bytes) -> Elf | None:
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    wide, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack_from(
            end + "HHIQQQIHHHHHH", data, 16
        )
    else:
        e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack_from(
            end + "HHIIIIIHHHHHH", data, 16
        )
    segments = []  # (type, offset, vaddr, filesz)
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(end + "IIQQQQ", data, at)
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(end + "IIIII", data, at)
        segments.append((p_type, p_offset, p_vaddr, p_filesz))
    dynamic: list[tuple[int, int]] = []
    for p_type, offset, _, size in segments:
        if p_type == PT_DYNAMIC:
            entry = struct.Struct(end + ("qQ" if wide else "iI"))
            for at in range(offset, offset + size - entry.size + 1, entry.size):
                tag, value = entry.unpack_from(data, at)
                if tag == 0:
                    break
                dynamic.append((tag, value))

    def string(value: int) -> str:
        strtab = next((v for t, v in dynamic if t == DT_STRTAB), None)
        for p_type, offset, vaddr, size in segments:
            if strtab is not None and p_type == PT_LOAD and vaddr <= strtab < vaddr + size:
                start = offset + strtab - vaddr + value
                return data[start : data.index(b"\0", start)].decode("utf-8", "replace")
        return ""

    flags_1 = next((v for t, v in dynamic if t == DT_FLAGS_1), 0)
    kind = {ET_EXEC: "executable", ET_DYN: "pie executable" if flags_1 & DF_1_PIE else "shared object"}
    search = [string(v) for t, v in dynamic if t in (DT_RPATH, DT_RUNPATH)]
    unstripped = False
    for i in range(shnum):
        sh_type = struct.unpack_from(end + "I", data, shoff + i * shentsize + 4)[0]
        unstripped = unstripped or sh_type == SHT_SYMTAB
    return Elf(
        kind=kind.get(e_type, "other"),
        interp=any(t == PT_INTERP for t, *_ in segments),
        needed=tuple(string(v) for t, v in dynamic if t == DT_NEEDED),
        soname=any(t == DT_SONAME for t, _ in dynamic),
        search_path=tuple(entry for value in search for entry in value.split(":")),
        relro=any(t == PT_GNU_RELRO for t, *_ in segments),
        unstripped=unstripped,
    )


@dataclass(frozen=True)
class Script:
    interpreter: str  # without /usr/bin/env, without options; "" for a bare "#!"
    env: bool


def read_script(head: bytes) -> Script | None:
    """A file's `#!` line as lintian reads it (lincity's `#!#!#!` data files are not scripts)."""
    if not head.startswith(b"#!") or head.startswith(b"#!#!#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    env = re.match(r"/usr/bin/env\s+", line) is not None
    line = re.sub(r"^/usr/bin/env\s+", "", line)
    return Script(line.split()[0] if line.split() else "", env)


# Interpreters lintian knows (its data/scripts/interpreters), modelled for the common ones: where
# Debian has them and the tag a script gets when the package does not depend on the interpreter
# ("" for an Essential one).
INTERPRETERS = {
    "sh": ("/bin", ""),
    "bash": ("/bin", ""),
    "dash": ("/bin", ""),
    "sed": ("/bin", ""),
    "perl": ("/usr/bin", ""),
    "awk": ("/usr/bin", ""),
    "python3": ("/usr/bin", "python3-script-but-no-python3-dep"),
    "python2": ("/usr/bin", "python2-script-but-no-python2-dep"),
    "ruby": ("/usr/bin", "ruby-script-but-no-ruby-dep"),
    "gawk": ("/usr/bin", "gawk-script-but-no-gawk-dep"),
    "mawk": ("/usr/bin", "mawk-script-but-no-mawk-dep"),
    "php": ("/usr/bin", "php-script-but-no-php-cli-dep"),
    "node": ("/usr/bin", "missing-dep-for-interpreter"),
    "make": ("/usr/bin", "missing-dep-for-interpreter"),
    "zsh": ("/bin", "missing-dep-for-interpreter"),
    "ksh": ("/bin", "missing-dep-for-interpreter"),
    "mksh": ("/bin", "missing-dep-for-interpreter"),
    "tcsh": ("/bin", "missing-dep-for-interpreter"),
    "csh": ("/bin", "missing-dep-for-interpreter"),
    "ash": ("/bin", "missing-dep-for-interpreter"),
    "expect": ("/usr/bin", "missing-dep-for-interpreter"),
    "Rscript": ("/usr/bin", "missing-dep-for-interpreter"),
    "tclsh": ("/usr/bin", "tclsh-script-but-no-tclsh-dep"),
    "wish": ("/usr/bin", "wish-script-but-no-wish-dep"),
    "lua": ("/usr/bin", "missing-dep-for-interpreter"),
}


def versioned(basename: str) -> str | None:
    """A versioned name of an interpreter modelled above ("ruby3.1", "python3.11" is not: it reads as
    "python3" + ".11") : the dependency tag of the unversioned one, or None."""
    base = re.fullmatch(r"(.*[^\d.-])-?[\d.]+", basename)
    if base and base.group(1) in INTERPRETERS and basename != base.group(1):
        return INTERPRETERS[base.group(1)][1] or None
    return None
