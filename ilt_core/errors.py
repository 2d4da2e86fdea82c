"""User-facing errors: one clear line that names the file, the field, the value and what was expected.

The CLI prints an :class:`ILTError` as a single line and exits with status 2, never a traceback.
"""


class ILTError(Exception):
    """A mistake the user can fix (a bad spec, a missing plugin, a wrong file)."""


class SpecError(ILTError):
    """A YAML component spec that does not validate."""


class CheckpointError(ILTError):
    """A checkpoint folder that is missing, truncated, corrupted or from another spec."""


def run_user_command(call, prog: str = "ilt") -> int:
    """Run a command's handler: a user's mistake prints one line and exits 2, Ctrl-C exits 130."""
    import sys

    try:
        return int(call() or 0)
    except ILTError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
