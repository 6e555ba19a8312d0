"""The LSTM math, once: pure functions of (params dict, inputs, config).

``params`` is a flat mapping from torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``, ``weight_ih``, ...) to arrays with torch's shapes. Everything else in the package
(modules, porting, the parity suite) is a shell over these functions.

Equations (torch's, gates stacked along ``4H`` in the order i, f, g, o)::

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh
    c'    = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'    = sigmoid(o) * tanh(c')              (h' <- h' W_hr^T when proj_size > 0)

Schedule: each layer projects its input with one GEMM per direction (the forward pass alone does
so a chunk of steps at a time), and both directions of a bidirectional layer advance together in
one loop (a batched matmul over the direction axis), the reverse one reading every buffer from the
end. Variable lengths follow torch's ``PackedSequence`` semantics: the reverse direction starts
at each sequence's own last valid element, states stop updating after a sequence's last step,
outputs past it are ``padding_value``.

Derivatives: each layer is a ``jax.custom_jvp``. Its tangent is a linear recurrence over the
activations the training loop records (the weights' tangents enter through GEMMs over all steps
before the loop), declared with ``jaxlstm._linear.linear_map`` to have the hand-scheduled
backward loop as its transpose; JAX's reverse mode transposes the tangent, so it runs exactly
that backward pass. Every loop is generic over the step's math, a ``cells.Cell`` passed as a static
argument; each loop uses the cell's one hand-written derivative (``Cell.activate_vjp``, whose
transpose is the cell's JVP).

The modules, one job each (internal; their names may change):

- ``cells``: the step's math and its derivative, one module per cell (``cells.lstm``).
- ``indexing``: rows, columns and skewed buffers.
- ``carriers``: the named tuples the loops pass around.
- ``recurrence``: the forward loops and the input projection.
- ``tangent``: forward mode's linear recurrence.
- ``backward``: the hand-scheduled backward loop.
- ``chunks``: chunked projection and remat.
- ``layer``: one layer as a ``jax.custom_jvp``.
- ``wavefront``: stacked layers in one loop.
- ``schedules``: :class:`Layered`, :class:`Remat`, :class:`Wavefront`, validated once.
- ``dropout``: masks between layers.
- ``api``: :func:`lstm`, :func:`lstm_cell`, :func:`init_params`.
"""

from jaxlstm.functional.api import compute_dtype, init_params, lstm, lstm_cell
from jaxlstm.functional.cells.lstm import cell_activate, cell_update, gate_scale
from jaxlstm.functional.chunks import DEFAULT_CHUNK_ROWS
from jaxlstm.functional.schedules import Layered, Remat, Wavefront

__all__ = ["DEFAULT_CHUNK_ROWS", "Layered", "Remat", "Wavefront", "cell_activate", "cell_update",
           "compute_dtype", "gate_scale", "init_params", "lstm", "lstm_cell"]
