"""Pipewarden: monitoring for data pipelines.

This package holds the typed client: the generated messages and stubs in `pipewarden.v1`, and a
small hand-written client in `pipewarden.client`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
