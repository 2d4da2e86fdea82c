"""ILT plugin ``cairo``: a word renderer on Pango layout and cairo pixels, with the system's fonts.

Components:

- ``cairo:default`` — renders a unit with Pango (shaping, bidi, font fallback over every font
  fontconfig knows) into a cairo image surface. Its pixels depend on the machine: the installed
  fonts, fontconfig's settings and the Pango/cairo versions (all part of its ``cache_key()``).
  For pixels that are the same on every machine use a FreeType renderer with pinned fonts.

This module stays light: pycairo and the Pango libraries are loaded only when a renderer is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl

INSTALL = (
    "pip install pycairo  (it builds from source: first apt-get install libcairo2-dev libpango1.0-dev pkg-config, "
    "or your system's cairo and pango development packages)"
)


@hookimpl
def ilt_components() -> list[Component]:
    """The renderer this plugin provides (its factory is imported lazily)."""
    return [
        Component(
            plugin="cairo",
            name="default",
            roles=("renderer",),
            factory="ilt_cairo.renderer:build_cairo_renderer",
            requires=("cairo",),
            install=INSTALL,
            description="Pango layout + cairo pixels with the system's fonts (machine-dependent); "
            "args: font_family, font_size, max_width, height, width_multiple",
        )
    ]
