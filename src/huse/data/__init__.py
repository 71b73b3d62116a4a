"""Data: manifests and their validation, splits, the class hierarchy, images and texts."""
