"""Models: loading pipelines by name (embedded models, local folders, hub ids), attnlab's model
organisms and their training, tiny random-weight models for tests, the paper's VideoCrafter2 and
LaVie as diffusers components, and the site-table families of every supported model
(:mod:`attnlab.models.families`, registered through the public extension point).

This package is light to import (torch and diffusers load inside the functions).
"""

from attnlab.models.loading import (
    DEFAULT_MODEL,
    NAME_ATTR,
    UnknownModelError,
    builtin_models,
    default_device,
    generate,
    load_pipeline,
    model_name,
    resolve_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "NAME_ATTR",
    "UnknownModelError",
    "builtin_models",
    "default_device",
    "generate",
    "load_pipeline",
    "model_name",
    "resolve_model",
]
