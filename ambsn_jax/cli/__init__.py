"""Command-line tools: train, evaluate, convert. Each parses its arguments before importing JAX."""
