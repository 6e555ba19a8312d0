"""Forward mode and second order against real torch: ``jvp`` in every configuration (float32
and float64, against ``torch.func.jvp`` on the same weights), through the NNX and Linen modules,
``jvp`` against ``vjp`` (``<v, J u> = <J^T v, u>``), ``linearize``, and ``hessian`` and ``jvp``
of ``grad`` against torch's double backward. Central differences in float64 are in
``tests/test_gradcheck.py``; ``jacfwd`` against torch's Jacobian in ``tests/test_transforms.py``.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.func import functional_call

import jaxlstm
from jaxlstm import functional, linen
from parity import forward_mode, properties, runner
from parity.properties import PropertyCase

DTYPES = ["float32", "float64"]
SMALL = forward_mode.SMALL
# Every configuration: layers, directions, proj_size, bias, seq_lengths, remat (with a padded
# last chunk), wavefront, unbatched, batch_first, loop unroll; and the cell.
CASES = forward_mode.grid(full=True)


def check(results):
    assert all(r.passed for r in results), properties.describe_failures(results)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_jvp_matches_torch(case, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # proj_size: oneDNN falls back, says so
        check(forward_mode.run_forward_mode_case(case, dtype, seed=0))


def torch_reference(case, dtype="float32"):
    module = runner.torch_module(case, dtype, 0)
    inputs = properties.make_inputs(case, dtype, 0)
    params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    tangents = forward_mode.random_tangents(params, inputs, 0)
    return module, inputs, tangents, forward_mode.torch_jvp(module, case, inputs, tangents)


def compare(case, actual, expected, dtype="float32"):
    keys = ("output", "h_n", "c_n") if case.kind == "lstm" else ("h", "c")
    errors = {f"jvp {k}": runner.relative_error(np.asarray(a), expected[f"jvp {k}"])
              for k, a in zip(keys, actual)}
    check([runner.Result(case, dtype, "native", errors)])


MODULE_CASE = PropertyCase(**SMALL, num_layers=2, bidirectional=True, proj_size=2,
                           packed=True, lengths=(5, 2, 4))


def test_nnx_module_jvp_matches_torch():
    module, inputs, tangents, expected = torch_reference(MODULE_CASE)
    model = jaxlstm.from_torch(module)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    d_params = jax.tree.map(jnp.zeros_like, params)
    nnx.replace_by_pure_dict(d_params, tangents.params)

    def run(params, x, hx):
        out, (h_n, c_n) = nnx.merge(graphdef, params, rest)(x, hx, seq_lengths=inputs.seq_lengths)
        return out, h_n, c_n

    _, actual = jax.jvp(run, (params, inputs.x, inputs.hx), (d_params, tangents.x, tangents.hx))
    compare(MODULE_CASE, actual, expected)


def test_linen_module_jvp_matches_torch():
    module, inputs, tangents, expected = torch_reference(MODULE_CASE)
    linen_module, variables = linen.from_torch(module)

    def run(variables, x, hx):
        out, (h_n, c_n) = linen_module.apply(variables, x, hx, seq_lengths=inputs.seq_lengths)
        return out, h_n, c_n

    d_variables = {"params": tangents.params}
    _, actual = jax.jvp(run, (variables, inputs.x, inputs.hx),
                        (d_variables, tangents.x, tangents.hx))
    compare(MODULE_CASE, actual, expected)


def test_nnx_cell_jvp_matches_torch():
    case = PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=2)
    module, inputs, tangents, expected = torch_reference(case)
    cell = jaxlstm.from_torch(module)
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
    d_params = jax.tree.map(jnp.zeros_like, params)
    nnx.replace_by_pure_dict(d_params, tangents.params)
    _, actual = jax.jvp(lambda p, x, hx: nnx.merge(graphdef, p, rest)(x, hx),
                        (params, inputs.x, inputs.hx), (d_params, tangents.x, tangents.hx))
    compare(case, actual, expected)


# --- jvp and vjp are transposes; linearize ---------------------------------------------------

def lstm_problem(case, seed=0):
    """float64 params and inputs of ``case`` and ``f(params, x, hx) -> (output, h_n, c_n)``."""
    module = runner.torch_module(case, "float64", seed)
    inputs = properties.make_inputs(case, "float64", seed)
    model = jaxlstm.from_torch(module, remat=case.remat or False)
    params = model.params()

    def f(params, x, hx):
        out, (h_n, c_n) = functional.lstm(params, x, hx, config=model.config,
                                          seq_lengths=inputs.seq_lengths, remat=case.remat)
        return out, h_n, c_n

    return f, (params, inputs.x, inputs.hx)


def inner(a, b):
    return sum(np.vdot(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), tree)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=lambda c: c.name)
def test_jvp_is_the_transpose_of_vjp(case):
    with jax.enable_x64(True):
        f, primals = lstm_problem(case)
        u = random_like(primals, 1)
        outputs, jvp_out = jax.jvp(f, primals, u)
        v = random_like(outputs, 2)
        _, vjp = jax.vjp(f, *primals)
        lhs, rhs = inner(v, jvp_out), inner(vjp(v), u)
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
        # linearize evaluates the same linear map.
        _, linear = jax.linearize(f, *primals)
        for a, b in zip(jax.tree.leaves(linear(*u)), jax.tree.leaves(jvp_out), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# --- Second order against torch's double backward ---------------------------------------------

HESSIAN_CASE = PropertyCase(input_size=2, hidden_size=3, seq_len=3, batch=2, bidirectional=True,
                            proj_size=2)


def torch_loss(module, inputs, names):
    """The parity loss of ``module`` as a function of ``x`` and the weights ``names``."""
    cotangents = {k: torch.from_numpy(v) for k, v in inputs.cotangents.items()}
    hx = tuple(torch.from_numpy(a) for a in inputs.hx)
    weights = dict(module.named_parameters())

    def loss(x, *values):
        params = {**{k: v.detach() for k, v in weights.items()}, **dict(zip(names, values))}
        out, (h_n, c_n) = functional_call(module, params, (x, hx))
        outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        return sum((cotangents[k] * v).sum() for k, v in outputs.items())

    return loss


def jax_loss(module, inputs):
    config = jaxlstm.from_torch(module).config

    def loss(params, x):
        out, (h_n, c_n) = functional.lstm(params, x, inputs.hx, config=config)
        outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        return sum(jnp.sum(inputs.cotangents[k] * v) for k, v in outputs.items())

    return loss


def test_hessian_matches_torch():
    """``jax.hessian`` (forward over reverse) with respect to the input and two weights, against
    ``torch.autograd.functional.hessian`` (reverse over reverse), float64."""
    case = HESSIAN_CASE
    module = runner.torch_module(case, "float64", 0)
    inputs = properties.make_inputs(case, "float64", 0)
    names = ("weight_hh_l0", "weight_hr_l0_reverse")
    values = [module.state_dict()[k] for k in names]
    expected = torch.autograd.functional.hessian(
        torch_loss(module, inputs, names), (torch.from_numpy(inputs.x), *values))
    with jax.enable_x64(True):
        params = {k: v.numpy() for k, v in module.state_dict().items()}
        loss = jax_loss(module, inputs)

        def of(x, *chosen):
            return loss({**params, **dict(zip(names, chosen))}, x)

        actual = jax.hessian(of, argnums=(0, 1, 2))(inputs.x, *(v.numpy() for v in values))
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(np.asarray(actual[i][j]), expected[i][j].numpy(),
                                       rtol=1e-10, atol=1e-12)


def test_jvp_of_grad_matches_torch_hvp():
    """Hessian-vector products over every weight and the input (``jax.jvp`` of ``jax.grad``)
    against ``torch.autograd.functional.hvp``, float64."""
    case = HESSIAN_CASE
    module = runner.torch_module(case, "float64", 0)
    inputs = properties.make_inputs(case, "float64", 0)
    names = tuple(module.state_dict())
    values = tuple(module.state_dict()[k] for k in names)
    rng = np.random.default_rng(3)
    direction = (rng.standard_normal(inputs.x.shape),
                 *(rng.standard_normal(tuple(v.shape)) for v in values))
    _, expected = torch.autograd.functional.hvp(
        torch_loss(module, inputs, names), (torch.from_numpy(inputs.x), *values),
        tuple(torch.from_numpy(d) for d in direction))
    with jax.enable_x64(True):
        loss = jax_loss(module, inputs)

        def grad_of(x, params):
            return jax.grad(loss, argnums=(1, 0))(params, x)

        params = dict(zip(names, (v.numpy() for v in values)))
        d_params = dict(zip(names, direction[1:]))
        _, (d_x, d_grads) = jax.jvp(grad_of, (inputs.x, params), (direction[0], d_params))
    np.testing.assert_allclose(np.asarray(d_x), expected[0].numpy(), rtol=1e-10, atol=1e-12)
    for name, e in zip(names, expected[1:]):
        np.testing.assert_allclose(np.asarray(d_grads[name]), e.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
