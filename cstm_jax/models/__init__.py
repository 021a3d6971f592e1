"""Backbones, the video classifier and the model zoo."""
