"""Plots of a run's results (infer_fast/plots.py): the files, and what is left out."""

from infer_fast.plots import PLOT_FILES, write_plots

PNG = b"\x89PNG\r\n\x1a\n"


def results(ipcs=(1, 10), with_history=True):
    rows, runs = [], {}
    for ipc in ipcs:
        for method, label, acc in (("infer", "INFER", 0.7), ("random", "Random", 0.6)):
            rows.append({"method": method, "label": label, "ipc": ipc, "accuracy_mean": acc + ipc / 100,
                         "accuracy_std": 0.01, "compression_ratio_percent": 0.2 * ipc, "feature_duplication": 0.8 - ipc / 100})
            history = [{"epoch": e, "test_accuracy": acc * e / 30} for e in (10, 20, 30)] if with_history else \
                [{"epoch": 30, "test_accuracy": acc}]
            runs[f"{method}/ipc{ipc}/seed0"] = {"final_accuracy": acc, "history": history}
    return {"config": {"dataset": "fashion-mnist"}, "table": rows, "runs": runs}


def test_every_plot_is_drawn(tmp_path):
    written = write_plots(results(), tmp_path)
    assert set(written) == set(PLOT_FILES)
    for name, path in written.items():
        assert path == str(tmp_path / PLOT_FILES[name])
        data = (tmp_path / PLOT_FILES[name]).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name  # a real picture, not an empty canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PLOT_FILES.values())  # no temporary files


def test_plots_without_their_data_are_left_out(tmp_path):
    written = write_plots(results(ipcs=(10,), with_history=False), tmp_path)
    assert set(written) == {"compression"}  # one ipc: no curves over ipc; one evaluation: no epoch curve
    assert write_plots({"config": {}, "table": [], "runs": {}}, tmp_path / "empty") == {}


def test_missing_values_are_skipped_not_plotted_as_zero(tmp_path):
    data = results()
    for row in data["table"]:
        if row["method"] == "random":
            row["feature_duplication"] = None
    assert "duplication" in write_plots(data, tmp_path)
    for row in data["table"]:
        row["feature_duplication"] = None
    assert "duplication" not in write_plots(data, tmp_path / "again")
