"""ILT plugin ``freetype``: a system-independent renderer (FreeType + HarfBuzz + bidi, pinned PyPI fonts).

Only light imports here: the factory module (freetype, uharfbuzz, numpy) loads when a renderer is built.
"""

from __future__ import annotations

from ilt_core import Component, hookimpl

INSTALL = (
    "pip install -e ilt_plugins/freetype  (or: pip install freetype-py==2.5.1 uharfbuzz==0.57.0 "
    "python-bidi==0.6.12 fontpkg-noto-sans==2.15 justmytype-intl-rtl==0.1.0 justmytype-intl-sea==0.1.0)"
)


@hookimpl
def ilt_components() -> list[Component]:
    return [
        Component(
            plugin="freetype",
            name="default",
            roles=("renderer",),
            factory="ilt_freetype.renderer:build_renderer",
            requires=(
                "freetype",
                "uharfbuzz",
                "bidi",
                "fontpkg_noto_sans",
                "justmytype_intl_rtl",
                "justmytype_intl_sea",
            ),
            install=INSTALL,
            description=(
                "Word images drawn with FreeType at HarfBuzz-shaped positions, bidi-reordered, from pinned "
                "Noto fonts on PyPI (Latin, Greek, Cyrillic, Devanagari, Hebrew, Arabic, Thai, Lao, Khmer, "
                "Myanmar; CJK with the [cjk] extra): the same pixels on every machine. Args: font_size, "
                "max_width (512), padding (2), baseline, weight (400), cjk."
            ),
        )
    ]
