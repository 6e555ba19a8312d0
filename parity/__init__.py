"""The parity suite: jaxlstm against real torch on a grid of configurations (``python -m parity``)."""
