"""Checkpoints: the metadata record, the Orbax layout shared by converted and trained models."""
