"""The ``ilt`` command line (``ilt_core.cli.main``); plugins add commands through a hook."""
