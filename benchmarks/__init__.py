"""Benchmarks: jaxlstm against torch and Flax (``python -m benchmarks``)."""
