"""The few Pango / PangoCairo / cairo C functions the renderer needs, through ctypes.

Why ctypes: manimpango (the usual Pango binding on PyPI) only renders to SVG *files*, and
PyGObject's PangoCairo needs GObject-introspection development packages and builds only as
``PyGObject<3.51`` here. The system's ``libpangocairo-1.0`` is present wherever pycairo builds
(it comes with ``libpango1.0-dev``), and ten C calls are all a single-line word layout needs.

pycairo gives the surfaces and the pixels; PangoCairo draws on a pycairo context through its
``cairo_t *``, read from the Python object (pycairo's ``PycairoContext`` layout, stable since
pycairo 1.0: ``PyObject_HEAD`` then the pointer). :func:`load` checks that reading before use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ilt_core.errors import ILTError

PANGO_SCALE = 1024
SHOW_SPACES, SHOW_LINE_BREAKS, SHOW_IGNORABLES = 1, 2, 4  # PangoShowFlags (Pango >= 1.44)
CAIRO_ANTIALIAS_GRAY, CAIRO_HINT_STYLE_NONE, CAIRO_HINT_METRICS_OFF = 2, 1, 1

APT_HINT = "apt-get install libpango-1.0-0 libpangocairo-1.0-0 (Debian/Ubuntu; brew install pango on macOS)"

_vp = ctypes.c_void_p
_int = ctypes.c_int
_uint = ctypes.c_uint
_double = ctypes.c_double
_str = ctypes.c_char_p


class PangoRectangle(ctypes.Structure):
    """``PangoRectangle``: x, y, width, height (pixels from the ``*_pixel_*`` getters)."""

    _fields_ = [("x", _int), ("y", _int), ("width", _int), ("height", _int)]


# name: (restype, argtypes)
_PANGO = {
    "pango_version_string": (_str, []),
    "pango_font_map_create_context": (_vp, [_vp]),
    "pango_font_map_list_families": (None, [_vp, ctypes.POINTER(ctypes.POINTER(_vp)), ctypes.POINTER(_int)]),
    "pango_font_family_get_name": (_str, [_vp]),
    "pango_font_description_new": (_vp, []),
    "pango_font_description_set_family": (None, [_vp, _str]),
    "pango_font_description_set_absolute_size": (None, [_vp, _double]),
    "pango_font_description_get_family": (_str, [_vp]),
    "pango_font_description_free": (None, [_vp]),
    "pango_font_describe": (_vp, [_vp]),
    "pango_context_load_font": (_vp, [_vp, _vp]),
    "pango_layout_new": (_vp, [_vp]),
    "pango_layout_set_text": (None, [_vp, _str, _int]),
    "pango_layout_set_font_description": (None, [_vp, _vp]),
    "pango_layout_set_single_paragraph_mode": (None, [_vp, _int]),
    "pango_layout_set_attributes": (None, [_vp, _vp]),
    "pango_layout_get_pixel_extents": (None, [_vp, ctypes.POINTER(PangoRectangle), ctypes.POINTER(PangoRectangle)]),
    "pango_layout_get_baseline": (_int, [_vp]),
    "pango_attr_list_new": (_vp, []),
    "pango_attr_list_insert": (None, [_vp, _vp]),
    "pango_attr_list_unref": (None, [_vp]),
    "pango_attr_show_new": (_vp, [_int]),
}
_PANGOCAIRO = {
    "pango_cairo_font_map_new": (_vp, []),
    "pango_cairo_context_set_font_options": (None, [_vp, _vp]),
    "pango_cairo_context_set_resolution": (None, [_vp, _double]),
    "pango_cairo_show_layout": (None, [_vp, _vp]),
}
_CAIRO = {
    "cairo_version": (_int, []),
    "cairo_font_options_create": (_vp, []),
    "cairo_font_options_set_antialias": (None, [_vp, _int]),
    "cairo_font_options_set_hint_style": (None, [_vp, _int]),
    "cairo_font_options_set_hint_metrics": (None, [_vp, _int]),
    "cairo_font_options_destroy": (None, [_vp]),
    "cairo_get_target": (_vp, [_vp]),
    "cairo_status": (_int, [_vp]),
    "cairo_image_surface_get_width": (_int, [_vp]),
    "cairo_image_surface_get_height": (_int, [_vp]),
}
_GOBJECT = {"g_object_unref": (None, [_vp]), "g_free": (None, [_vp])}


def _open(names: tuple[str, ...], what: str) -> ctypes.CDLL:
    """The first of ``names`` (library base names) that loads."""
    tried = []
    for name in names:
        for candidate in (ctypes.util.find_library(name), f"lib{name}.so.0", f"lib{name}.so.2", f"lib{name}.dylib"):
            if not candidate or candidate in tried:
                continue
            tried.append(candidate)
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    raise ILTError(
        f"cairo renderer: the system library {what} was not found (tried {', '.join(tried)}); run: {APT_HINT}"
    )


def _bind(lib: ctypes.CDLL, table: dict[str, tuple[Any, list]], what: str) -> dict[str, Any]:
    functions = {}
    for name, (restype, argtypes) in table.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise ILTError(
                f"cairo renderer: {what} lacks {name}; Pango >= 1.44 and cairo >= 1.10 are required ({APT_HINT})"
            ) from exc
        fn.restype, fn.argtypes = restype, argtypes
        functions[name] = fn
    return functions


@dataclass(frozen=True)
class Pango:
    """The bound C functions (attribute access by C name) and the libraries' versions."""

    fn: dict[str, Any]
    pango_version: str
    cairo_version: str
    pycairo_version: str

    def __getattr__(self, name: str) -> Any:
        if name == "fn":  # not yet set (copy/pickle): avoid recursing
            raise AttributeError(name)
        try:
            return self.fn[name]
        except KeyError:
            raise AttributeError(name) from None

    def context_pointer(self, context: Any) -> int:
        """The ``cairo_t *`` inside a ``cairo.Context`` (pycairo object layout, checked by :func:`load`)."""
        return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value or 0

    def surface_pointer(self, surface: Any) -> int:
        """The ``cairo_surface_t *`` inside a ``cairo.Surface``."""
        return ctypes.c_void_p.from_address(id(surface) + object.__basicsize__).value or 0

    def font_families(self, font_map: int) -> list[str]:
        """Names of every font family the font map knows (fontconfig's installed fonts)."""
        families = ctypes.POINTER(_vp)()
        count = _int(0)
        self.pango_font_map_list_families(font_map, ctypes.byref(families), ctypes.byref(count))
        try:
            return sorted((self.pango_font_family_get_name(families[i]) or b"").decode() for i in range(count.value))
        finally:
            self.g_free(ctypes.cast(families, _vp))

    def fonts_fingerprint(self, font_map: int) -> str:
        """A short hash of the installed font families: installing or removing fonts changes it."""
        return hashlib.sha1("\n".join(self.font_families(font_map)).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def load() -> Pango:
    """Load and check the libraries once per process; an :class:`ILTError` says what is missing."""
    import cairo  # pycairo; imported here so the plugin module stays light

    pango = _open(("pango-1.0",), "libpango-1.0")
    pangocairo = _open(("pangocairo-1.0",), "libpangocairo-1.0")
    libcairo = _open(("cairo",), "libcairo")
    gobject = _open(("gobject-2.0",), "libgobject-2.0")
    fn = {}
    for lib, table, what in (
        (pango, _PANGO, "libpango-1.0"),
        (pangocairo, _PANGOCAIRO, "libpangocairo-1.0"),
        (libcairo, _CAIRO, "libcairo"),
        (gobject, _GOBJECT, "libgobject-2.0"),
    ):
        fn.update(_bind(lib, table, what))
    version = fn["cairo_version"]()
    lib_version = f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    if lib_version != cairo.cairo_version_string():
        # Two different cairo libraries in one process: pointers from one must not reach the other.
        raise ILTError(
            f"cairo renderer: pycairo uses cairo {cairo.cairo_version_string()} but libpangocairo uses cairo "
            f"{lib_version}; reinstall pycairo from source against the system cairo: "
            "pip install --no-binary pycairo --force-reinstall pycairo"
        )
    bound = Pango(fn, (fn["pango_version_string"]() or b"?").decode(), lib_version, cairo.version)
    # Check that the pointers read out of pycairo objects are the real ones before drawing with them.
    surface = cairo.ImageSurface(cairo.FORMAT_A8, 7, 5)
    context = cairo.Context(surface)
    surface_ptr, context_ptr = bound.surface_pointer(surface), bound.context_pointer(context)
    if (
        not surface_ptr
        or not context_ptr
        or fn["cairo_image_surface_get_width"](surface_ptr) != 7
        or fn["cairo_image_surface_get_height"](surface_ptr) != 5
        or fn["cairo_status"](context_ptr) != 0
        or fn["cairo_get_target"](context_ptr) != surface_ptr
    ):
        raise ILTError(
            f"cairo renderer: pycairo {cairo.version} has an object layout this plugin does not know; "
            "pin the pycairo this plugin was tested with: pip install pycairo==1.29.2"
        )
    return bound
