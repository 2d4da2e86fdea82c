"""User-facing errors: one clear line that names the file, the field, the value and what was expected.

The CLI prints an :class:`ILTError` as a single line and exits with status 2, never a traceback.
"""


class ILTError(Exception):
    """A mistake the user can fix (a bad spec, a missing plugin, a wrong file)."""


class SpecError(ILTError):
    """A YAML component spec that does not validate."""


class CheckpointError(ILTError):
    """A checkpoint folder that is missing, truncated, corrupted or from another spec."""
