"""Data parallel training on 8 fake CPU devices gives the loss and gradients of one device.

JAX fixes its device count when it starts, so the 8-device run happens in a subprocess started
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it prints its results as JSON and
this process compares them with the same step computed here, unsharded, on one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import tagger  # noqa: E402

HIDDEN, BATCH, SEED = 8, 16, 0

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "examples")
    import jax, numpy as np, optax
    import data_parallel as dp, tagger

    HIDDEN, BATCH, SEED, OUT = {hidden}, {batch}, {seed}, sys.argv[1]
    task = tagger.Task()
    model = tagger.make_model(task, HIDDEN)
    params = tagger.init_params(model, task, SEED)
    batch = tagger.make_batch(np.random.default_rng(SEED), BATCH, task)
    mesh = dp.make_mesh()

    def named(tree):
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return {{jax.tree_util.keystr(k): np.asarray(v).tolist() for k, v in flat}}

    loss, grads = dp.loss_and_grads(model, params, batch, mesh)
    tx = optax.adam(1e-2)
    step = dp.sharded_train_step(model, tx, mesh)
    sharded = dp.shard_batch(batch, mesh)
    stepped, opt_stepped, step_loss = step(dp.replicate(params, mesh),
                                           dp.replicate(tx.init(params), mesh), sharded)
    # A checkpoint of the replicated state restores onto the mesh, bit for bit.
    from jaxlstm.checkpoint import restore_train_state, save_train_state
    save_train_state(OUT + "/state", stepped, opt_stepped, 1)
    restored, opt_restored, _ = restore_train_state(
        OUT + "/state", dp.replicate(params, mesh), dp.replicate(tx.init(params), mesh))
    restored_leaves = jax.tree.leaves((restored, opt_restored))
    restore_exact = all(np.array_equal(a, b) for a, b in zip(
        restored_leaves, jax.tree.leaves((stepped, opt_stepped))))
    restore_devices = min(len(leaf.sharding.device_set) for leaf in restored_leaves)
    try:
        dp.shard_batch(tagger.make_batch(np.random.default_rng(0), 12, task), mesh)
        uneven = None
    except ValueError as error:
        uneven = str(error)
    run = dp.main(["--no-progress", "--steps", "4", "--hidden", str(HIDDEN), "--batch-size",
                   str(BATCH), "--eval-size", "32", "--out", OUT])
    print(json.dumps({{
        "device_count": jax.device_count(),
        "mesh_size": int(mesh.devices.size),
        "batch_devices": len(sharded["tokens"].sharding.device_set),
        "shard_rows": sorted({{s.data.shape[0] for s in sharded["tokens"].addressable_shards}}),
        "loss": float(loss),
        "grads": named(grads),
        "step_loss": float(step_loss),
        "stepped": named(stepped),
        "uneven": uneven,
        "restore_exact": restore_exact,
        "restore_devices": restore_devices,
        "main": {{k: run[k] for k in ("num_devices", "batch_devices", "loss_diff", "grad_diff")}},
        "main_plot": str(run["plot"]),
    }}))
    """
).format(hidden=HIDDEN, batch=BATCH, seed=SEED)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("data_parallel")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single_device():
    """The same loss, gradients and optimizer step, unsharded, in this process."""
    task = tagger.Task()
    model = tagger.make_model(task, HIDDEN)
    params = tagger.init_params(model, task, SEED)
    batch = tagger.make_batch(np.random.default_rng(SEED), BATCH, task)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: tagger.loss_fn(model, p, batch)))(params)
    tx = optax.adam(1e-2)
    stepped, _, step_loss = jax.jit(tagger.make_train_step(model, tx))(params, tx.init(params),
                                                                       batch)
    return loss, grads, stepped, step_loss


def named(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def test_batch_is_split_over_eight_devices(eight_devices):
    assert eight_devices["device_count"] == eight_devices["mesh_size"] == 8
    assert eight_devices["batch_devices"] == 8
    assert eight_devices["shard_rows"] == [BATCH // 8]


def test_sharded_loss_and_gradients_equal_one_device(eight_devices, single_device):
    loss, grads, _, _ = single_device
    np.testing.assert_allclose(eight_devices["loss"], float(loss), rtol=1e-6, atol=1e-6)
    expected = named(grads)
    assert set(eight_devices["grads"]) == set(expected)
    assert any(np.abs(g).max() > 1e-3 for g in expected.values())  # a real gradient
    for name, value in expected.items():
        np.testing.assert_allclose(eight_devices["grads"][name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_sharded_train_step_equals_one_device(eight_devices, single_device):
    _, _, stepped, step_loss = single_device
    np.testing.assert_allclose(eight_devices["step_loss"], float(step_loss), rtol=1e-6)
    for name, value in named(stepped).items():
        np.testing.assert_allclose(eight_devices["stepped"][name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_example_runs_on_eight_devices(eight_devices):
    run = eight_devices["main"]
    assert run["num_devices"] == run["batch_devices"] == 8
    assert run["loss_diff"] < 1e-6 and run["grad_diff"] < 1e-6
    assert Path(eight_devices["main_plot"]).read_bytes()[:4] == b"\x89PNG"


def test_uneven_batch_is_refused_with_the_fix(eight_devices):
    assert "12 rows, which do not split evenly over 8 devices" in eight_devices["uneven"]
    assert "divisible by 8" in eight_devices["uneven"]


def test_train_state_restores_onto_the_mesh_exactly(eight_devices):
    assert eight_devices["restore_exact"] is True
    assert eight_devices["restore_devices"] == 8
