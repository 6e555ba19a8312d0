"""A BiLSTM sequence tagger (Flax Linen) on variable-length sequences, trained with optax.

The task needs both past and future context: each sequence is a random string of ``--tokens``
symbols ``0..V-1``, and the label of position ``t`` is ``x[t - k] + x[t + k]`` (``k`` =
``--offset``), defined where both neighbours exist; other positions and the padding are masked
out of the loss. A unidirectional LSTM at step ``t`` has not seen ``x[t + k]``, so it can only
guess that half: at best ``1/V`` accuracy. A BiLSTM reads the sequence backwards as well and can
be exact. Batches are padded with :func:`jaxlstm.data.pad_sequences` and the model gets the true
lengths as ``seq_lengths`` (torch ``PackedSequence`` semantics), so the reverse direction starts
at each sequence's own last token, never in the padding.

Both models (same hidden size) train with ``optax.adam`` in a jitted step; the script reports
held-out token accuracy of each and plots the loss curves.

Run from the repository root::

    python examples/tagger.py [--steps 500] [--hidden 32] [--out examples/out]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import add_common_args, output_dir, plt, progress, save_figure

import jaxlstm.linen
from jaxlstm.data import pad_sequences

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
    """Sequences of ``num_tokens`` symbols, ``min_length..max_length`` long; label at ``t`` is
    ``x[t - offset] + x[t + offset]`` (``2 * num_tokens - 1`` classes)."""

    num_tokens: int = 4
    offset: int = 2
    min_length: int = 8
    max_length: int = 24

    def __post_init__(self) -> None:
        if self.min_length < 2 * self.offset + 1 or self.max_length < self.min_length:
            raise ValueError(
                f"need 2 * offset + 1 <= min_length <= max_length so that every sequence has a "
                f"labelled position; got offset={self.offset}, min_length={self.min_length}, "
                f"max_length={self.max_length}"
            )

    @property
    def num_classes(self) -> int:
        return 2 * self.num_tokens - 1


def sequence_labels(tokens: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(L,)`` of one sequence ``(L,)`` and the mask of positions that have a label."""
    labels = np.zeros(len(tokens), np.int32)
    mask = np.zeros(len(tokens), bool)
    inner = slice(offset, len(tokens) - offset)
    labels[inner] = tokens[: len(tokens) - 2 * offset] + tokens[2 * offset :]
    mask[inner] = True
    return labels, mask


def make_batch(rng: np.random.Generator, batch_size: int, task: Task) -> Batch:
    """A padded, batch-first batch: ``tokens``, ``labels``, ``mask`` ``(N, T)``, ``lengths (N,)``.

    ``T`` is always ``task.max_length`` so that the jitted step compiles once.
    """
    lengths = rng.integers(task.min_length, task.max_length + 1, batch_size)
    sequences = [rng.integers(0, task.num_tokens, n).astype(np.int32) for n in lengths]
    labelled = [sequence_labels(s, task.offset) for s in sequences]
    pad = dict(batch_first=True, total_length=task.max_length)
    tokens, lengths = pad_sequences(sequences, **pad)
    labels, _ = pad_sequences([lab for lab, _ in labelled], **pad)
    mask, _ = pad_sequences([m for _, m in labelled], **pad)
    return {"tokens": tokens, "lengths": lengths, "labels": labels, "mask": mask}


class Tagger(nn.Module):
    """One-hot tokens -> (Bi)LSTM (batch first, ``seq_lengths``) -> per-token class logits."""

    num_tokens: int
    hidden_size: int
    num_classes: int
    bidirectional: bool = True

    @nn.compact
    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        """**Arguments:** ``tokens`` int ``(N, T)``, ``lengths`` int ``(N,)``.
        **Returns:** logits ``(N, T, num_classes)``."""
        x = jax.nn.one_hot(tokens, self.num_tokens)
        lstm = jaxlstm.linen.LSTM(
            self.num_tokens, self.hidden_size, batch_first=True,
            bidirectional=self.bidirectional, name="lstm",
        )
        out, _ = lstm(x, seq_lengths=lengths)
        # The label is a sum of two tokens, so a linear readout of the two directions suffices.
        return nn.Dense(self.num_classes, name="head")(out)


def make_model(task: Task, hidden_size: int, bidirectional: bool = True) -> Tagger:
    return Tagger(task.num_tokens, hidden_size, task.num_classes, bidirectional)


def init_params(model: Tagger, task: Task, seed: int) -> dict[str, Any]:
    tokens = jnp.zeros((1, task.max_length), jnp.int32)
    lengths = jnp.full((1,), task.max_length, jnp.int32)
    return model.init(jax.random.key(seed), tokens, lengths)["params"]


def loss_fn(model: Tagger, params: Any, batch: Batch) -> jax.Array:
    """Mean cross-entropy over the labelled positions of the batch (padding excluded)."""
    logits = model.apply({"params": params}, batch["tokens"], batch["lengths"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    mask = batch["mask"].astype(losses.dtype)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(model: Tagger, tx: optax.GradientTransformation) -> Callable:
    """``train_step(params, opt_state, batch) -> (params, opt_state, loss)``, not yet jitted."""

    def train_step(params: Any, opt_state: Any, batch: Batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def accuracy(model: Tagger, params: Any, batch: Batch) -> float:
    """Fraction of labelled positions whose most likely class is the label."""
    logits = jax.jit(model.apply)({"params": params}, batch["tokens"], batch["lengths"])
    correct = (np.asarray(jnp.argmax(logits, -1)) == batch["labels"]) & batch["mask"]
    return float(correct.sum() / batch["mask"].sum())


def train(
    model: Tagger, task: Task, *, steps: int, batch_size: int, lr: float, seed: int,
    description: str, disable_progress: bool = False,
) -> tuple[Any, list[float]]:
    """Train ``model`` from a fresh init; returns ``(params, losses)``."""
    params = init_params(model, task, seed)
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    train_step = jax.jit(make_train_step(model, tx))
    rng = np.random.default_rng(seed)
    losses = []
    bar = progress(steps, description, disable=disable_progress)
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, make_batch(rng, batch_size, task))
        losses.append(float(loss))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return params, losses


def plot(path, curves: dict[str, list[float]], accuracies: dict[str, float], chance: float):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), width_ratios=(2, 1))
    for name, losses in curves.items():
        left.plot(losses, lw=0.8, label=name)
    # Without x[t + k] the label is uniform over V classes: cross-entropy >= ln V.
    left.axhline(np.log(1 / chance), color="k", ls="--", lw=1, label="best without future (ln V)")
    left.set(xlabel="step", ylabel="cross-entropy (batch)", title="training loss")
    left.legend()
    names = list(accuracies)
    bars = right.bar(names, [accuracies[n] for n in names], color=["C0", "C1"])
    right.bar_label(bars, fmt="%.3f")
    right.axhline(chance, color="k", ls="--", lw=1, label="best without future (1/V)")
    right.set(ylim=(0, 1.1), ylabel="held-out token accuracy", title="accuracy")
    right.legend(loc="center right", fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train a BiLSTM and a unidirectional LSTM tagger, compare held-out accuracy, plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, steps=500)
    parser.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (both models)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--tokens", type=int, default=4, help="vocabulary size V")
    parser.add_argument("--offset", type=int, default=2, help="label uses x[t-k] and x[t+k]")
    parser.add_argument("--min-length", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=24)
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out sequences")
    args = parser.parse_args(argv)
    out = output_dir(args.out)
    task = Task(args.tokens, args.offset, args.min_length, args.max_length)
    held_out = make_batch(np.random.default_rng(args.seed + 10_000), args.eval_size, task)

    curves, accuracies = {}, {}
    for name, bidirectional in (("BiLSTM", True), ("LSTM", False)):
        model = make_model(task, args.hidden, bidirectional)
        params, curves[name] = train(
            model, task, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, description=f"tagger {name}", disable_progress=args.no_progress,
        )
        accuracies[name] = accuracy(model, params, held_out)
    chance = 1.0 / task.num_tokens
    result = {"losses": curves, "accuracy": accuracies, "chance": chance,
              "plot": out / "tagger.png"}
    plot(result["plot"], curves, accuracies, chance)
    verdict = "beats" if accuracies["BiLSTM"] > accuracies["LSTM"] else "does NOT beat"
    print(
        f"tagger: BiLSTM held-out accuracy {accuracies['BiLSTM']:.3f} {verdict} unidirectional "
        f"LSTM {accuracies['LSTM']:.3f} (hidden {args.hidden} each; best possible without future "
        f"context {chance:.3f}); plot: {result['plot']}"
    )
    return result


if __name__ == "__main__":
    main()
