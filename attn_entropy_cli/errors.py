"""The one error family the library raises; the CLI turns each into one stderr line."""


class AttnentError(Exception):
    """A problem the user can fix: bad input contents, bad arguments, missing paths.

    The message reads `<what happened>. <what to do>` and names the file or value at fault.
    """

    exit_code = 1


class InputError(AttnentError):
    """A file or model exists but its contents cannot be used (exit 1)."""

    exit_code = 1


class UsageError(AttnentError):
    """A bad argument, option value or missing path (exit 2)."""

    exit_code = 2


class FlagRaised(AttnentError):
    """A `--fail-on` flag was raised by `compare` (exit 3)."""

    exit_code = 3


class AttnentWarning(UserWarning):
    """Something the caller can act on: skipped files, dropped values, truncated examples."""
