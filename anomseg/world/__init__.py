"""The built-in procedural road-scene world.

Importing this package registers the ``procedural`` background source and the ``bank`` object
source (``anomseg.synth.sources.BACKGROUND_SOURCES`` / ``OBJECT_SOURCES``).
"""

from anomseg.world.objects import ObjectBank, make_object
from anomseg.world.scenes import ProceduralScenes, generate_scene, scene_params

__all__ = ["ObjectBank", "ProceduralScenes", "generate_scene", "make_object", "scene_params"]
