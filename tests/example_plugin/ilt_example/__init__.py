"""An example third-party ILT plugin: one hook implementation listing the modules of its factories.

The factories declare their components with ``@component`` (see :mod:`ilt_example.encoder`); this
module stays light, so listing plugins never imports torch or the factories' module.
"""

from ilt_core import Component, hookimpl
from ilt_core.plugins.registry import components_in


@hookimpl
def ilt_components() -> list[Component]:
    return components_in("example", "ilt_example.encoder")
