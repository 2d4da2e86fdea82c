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
    """Run a command's handler: a user's mistake prints one line and exits 2, Ctrl-C exits 130.

    A mistake is an :class:`ILTError`, or a file the user named that cannot be read or written (an ``OSError``
    naming it: a missing folder, no permission, a file where a folder is expected).
    """
    import sys

    try:
        return int(call() or 0)
    except ILTError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"{prog}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _usage_error(prog: str, message: str):
    import sys

    print(f"{prog}: error: {message} (`{prog} --help` lists the arguments)", file=sys.stderr)
    sys.exit(2)


def one_line_usage_errors(parser):
    """Make ``parser`` (an ``argparse.ArgumentParser``, e.g. transformers' ``HfArgumentParser``) print a usage
    error as one line and exit 2: ``PROG: error: MESSAGE (`PROG --help` lists the arguments)``. Returns it."""
    parser.error = lambda message: _usage_error(parser.prog, message)
    return parser


def one_line_parser_class():
    """An ``argparse.ArgumentParser`` subclass whose usage errors are one line (its subparsers' too)."""
    import argparse

    class OneLineArgumentParser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            _usage_error(self.prog, message)

    return OneLineArgumentParser
