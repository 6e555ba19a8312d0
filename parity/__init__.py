"""The parity suite: jaxlstm against real torch over a grid of configurations.

Run it with ``python -m parity``.
"""
