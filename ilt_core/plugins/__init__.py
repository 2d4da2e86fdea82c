"""Plugins: the five role protocols, the pluggy hook specifications and the component registry."""
