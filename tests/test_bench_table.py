"""bench/fashion_mnist_table.py's merge of the per-ipc processes' results files."""
import importlib.util
import os

from infer_fast.results import RESULTS_FORMAT

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "fashion_mnist_table.py")


def _table_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _part(ipc: int) -> dict:
    key = f"random/ipc{ipc}"
    return {"format": RESULTS_FORMAT, "config": {"dataset": "fashion-mnist", "ipc": [ipc]},
            "teachers": [{"model": "convnet"}], "sets": {key: {"training_images": 10 * ipc}},
            "runs": {f"{key}/seed0": {"final_accuracy": 0.5}}, "scores": {key: {"scores": {"ior": ipc}}},
            "external_sets": None, "timing": {"session_s": 10.0 * ipc}}


def test_merge_keeps_every_keyed_part_and_each_process_timing():
    """Scores were dropped before (only sets and runs were merged), and the format with them."""
    merged = _table_module().merged_results([_part(1), _part(2)], [1, 2])
    assert merged["format"] == RESULTS_FORMAT and merged["config"]["ipc"] == [1, 2]
    assert set(merged["sets"]) == set(merged["scores"]) == {"random/ipc1", "random/ipc2"}
    assert set(merged["runs"]) == {"random/ipc1/seed0", "random/ipc2/seed0"}
    assert merged["scores"]["random/ipc2"] == {"scores": {"ior": 2}}
    assert "external_sets" not in merged  # (null in every part: none)
    assert merged["timing_per_ipc"] == {"1": {"session_s": 10.0}, "2": {"session_s": 20.0}}
