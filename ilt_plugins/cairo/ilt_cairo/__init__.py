"""ILT plugin ``cairo``: a word renderer on Pango layout and cairo pixels, with the system's fonts.

Component ``cairo:default`` (declared with ``@component`` in :mod:`ilt_cairo.renderer`): its pixels
depend on the machine (the installed fonts, fontconfig's settings, the Pango/cairo versions, all part
of its ``cache_key()``); for pixels that are the same on every machine use a FreeType renderer with
pinned fonts. This module stays light: pycairo and the Pango libraries load when a renderer is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    """The renderer declared in :mod:`ilt_cairo.renderer` (read, not imported)."""
    return components_in("cairo", "ilt_cairo.renderer")
