"""Specs: YAML component specs validated with pydantic, and the named presets under ``presets/``."""
