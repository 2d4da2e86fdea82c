"""ILT plugin ``freetype``: a system-independent renderer (FreeType + HarfBuzz + bidi, pinned PyPI fonts).

Component ``freetype:default`` (declared with ``@component`` in :mod:`ilt_freetype.renderer`). Only
light imports here: the factory module (freetype, uharfbuzz, numpy) loads when a renderer is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    """The renderer declared in :mod:`ilt_freetype.renderer` (read, not imported)."""
    return components_in("freetype", "ilt_freetype.renderer")
