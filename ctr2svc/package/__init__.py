"""The package stage: the planned service as a .deb, .rpm or .apk.

nfpm packs it (nfpm.py: its configuration, compression, signing and timestamps) from the service's
files and the image's root (service_package.py), or a shared layer's files (layer_package.py); what
nfpm cannot write is written after it (finish.py: hard links as hard links in each format's payload,
payload.py, and the rpm's header, rpmheader.py; gpgsign.py signs again what changed), but for a flat
.deb, whose image files ctr2svc streams into the package itself (debdata.py). Debian's own
files (copyright, changelog, lintian overrides) are debian.py's, the overrides judged from the
image's files by imagelint.py (filekinds.py reads their ELF headers and `#!` lines). Names, versions
and architectures in each format's rules are naming.py's.
"""
