"""OpenPGP signatures made again after ctr2svc edits a package nfpm signed (rpm's header signatures,
a .deb's _gpgorigin): the same secret key file nfpm was given, its passphrase in $NFPM_PASSPHRASE as
for nfpm, and the build's time as the signature's, so that the same build gives the same bytes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ctr2svc.run import find_tool, run


def detach_sign(source: Path, key_file: Path, epoch: int, *, armor: bool = False) -> bytes:
    """A detached signature of the file SOURCE by the secret key in KEY_FILE, made at EPOCH."""
    gpg = find_tool("gpg", "sign the package again after ctr2svc edits it (apt-get install gnupg)")
    passphrase = os.environ.get("NFPM_PASSPHRASE", "").encode() + b"\n"
    base = [gpg, "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase-fd", "0"]
    with tempfile.TemporaryDirectory(prefix="ctr2svc-gpg-") as home:
        env = {"GNUPGHOME": home}
        try:
            run([*base, "--import", key_file], input=passphrase, env=env, what="read the signing key")
            # The build's time, unless the key is newer: a signature older than its key is one gpg,
            # gpgv and debsig-verify refuse ("Time conflict"), and an image is often older than the
            # key that signs its package. Either way the same build and key give the same bytes.
            when = max(epoch, _newest_key_time(gpg, env))
            proc = run(
                [
                    *base,
                    "--faked-system-time",
                    f"{when}!",
                    "--digest-algo",
                    "SHA256",
                    *(["--armor"] if armor else []),
                    "--detach-sign",
                    "--output",
                    "-",
                    source,
                ],
                input=passphrase,
                env=env,
                what="sign the package",
            )
        finally:
            # The agent gpg started for this home would outlive it.
            run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False, what="stop gpg-agent")
        return proc.stdout


def _newest_key_time(gpg: str, env: dict[str, str]) -> int:
    """When the newest of the imported secret key's parts (primary key, subkeys) was made."""
    listing = run(
        [gpg, "--batch", "--with-colons", "--list-secret-keys"], env=env, what="read the signing key"
    ).stdout.decode(errors="replace")
    times = [
        int(fields[5])
        for fields in (line.split(":") for line in listing.splitlines())
        if fields[0] in ("sec", "ssb") and len(fields) > 5 and fields[5].isdigit()
    ]
    return max(times, default=0)
