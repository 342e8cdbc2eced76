"""The service stage: how the unpacked image runs on the host.

From the planned ServiceSpec it makes the OCI runtime config runc reads (runtime_config, with the
seccomp allow-list of seccomp), the systemd unit and its sandbox (units, sandbox) or the OpenRC script,
the maintainer scripts, and the private network's description (network). The service helper these
files call is ctr2svc/runtime/.
"""
