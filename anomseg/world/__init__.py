"""The built-in procedural road-scene world."""
