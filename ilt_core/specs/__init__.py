"""Specs: YAML component specs validated with pydantic, and the named presets under ``presets/``.

- ``spec``: :class:`~ilt_core.specs.spec.ModelSpec`, loading a spec or preset, checking its components.
"""
