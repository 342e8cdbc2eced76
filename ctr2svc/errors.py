"""The error family ctr2svc raises; the CLI turns each into one line and an exit status."""

from __future__ import annotations


class Ctr2svcError(Exception):
    """A failure the user can act on: `brief` says what went wrong, `hint` what to do about it."""

    exit_code = 1

    def __init__(self, brief: str, hint: str | None = None, details: str | None = None) -> None:
        super().__init__(brief)
        self.brief = brief
        self.hint = hint
        # Longer text (a tool's stderr) shown only with --debug, so the one-line error stays one line.
        self.details = details

    def one_line(self) -> str:
        return f"{self.brief} (hint: {self.hint})" if self.hint else self.brief


class UsageError(Ctr2svcError):
    """Bad arguments or a bad combination of them."""

    exit_code = 2


class ImageError(Ctr2svcError):
    """The image cannot be found, fetched or used as a service."""

    exit_code = 3


class ToolError(Ctr2svcError):
    """An external tool is missing, too old, or failed."""

    exit_code = 4


class PackageError(Ctr2svcError):
    """Packing or writing the package failed."""

    exit_code = 5


class PartialFailure(Ctr2svcError):
    """Some images of a project failed; the others were built (and published)."""

    exit_code = 6


class ToolFailed(ToolError):
    """A tool ran and exited non-zero; callers may map its stderr to a more specific error."""

    def __init__(self, brief: str, *, tool: str, returncode: int, stderr: str, command: str) -> None:
        super().__init__(brief, details=f"command: {command}\n{stderr}")
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr


class ToolTimedOut(ToolError):
    """A tool ran past its time limit (`stalled`: made too little progress for `seconds`) and was
    stopped; callers may say which limit, in their words."""

    def __init__(self, brief: str, *, tool: str, seconds: float, stalled: bool, command: str) -> None:
        super().__init__(brief, details=f"command: {command}")
        self.tool = tool
        self.seconds = seconds
        self.stalled = stalled
