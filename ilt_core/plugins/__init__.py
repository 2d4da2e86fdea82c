"""Plugins: the five role protocols, the pluggy hook specifications and the component registry.

- ``protocols``: the five component roles (renderer, encoders, latent transformer, bytes decoder) as typed protocols.
- ``hookspecs``: what a plugin can supply (components, data recipes, CLI commands).
- ``registry``: plugins found through the ``ilt`` entry-point group; components built by name.
- ``arguments``: what a component factory accepts (its keyword arguments and types), for checks and listings.
- ``images``: helpers that image-encoder plugins share.
"""
