"""Model architectures and the create_model registry."""
