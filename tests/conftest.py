import sys
from pathlib import Path

# The parity suite and examples live beside the package, at the repository root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The longest tests (measured with --durations) come first: pytest-xdist deals the first tests
# out to its workers in turn, so these run side by side from the start instead of one of them
# holding a worker up after the rest are done. A test renamed away from here only loses its
# head start.
LONGEST_FIRST = (
    "tests/test_properties.py::test_lstm_matches_torch_on_random_configurations_float32",
    "tests/test_benchmarks.py::test_benchmark_suite_writes_its_reports",
    "tests/test_properties.py::test_lstm_matches_torch_on_random_configurations_float64",
    "tests/test_sharding.py::",
    "tests/test_cli.py::test_commands_from_a_wheel_outside_the_checkout",
    "tests/test_layouts.py::test_prefix_through_the_one_container_that_held_every_tensor",
    "tests/test_gradcheck.py::test_lstm_gradients_match_finite_differences",
    "tests/test_properties.py::test_lstm_forward_mode_matches_torch_on_random_configurations",
    "tests/test_forward_mode.py::test_jvp_is_the_transpose_of_vjp",
    "tests/test_transforms.py::test_jit_matches_eager_values_and_gradients",
    "tests/test_benchmarks.py::test_floor_writes_its_reports",
    "tests/test_wavefront.py::test_dropout_in_training_draws_the_same_masks_as_layer_by_layer",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: every other test keeps its place
