"""Plots of a run's results (infer_fast/plots.py): the files, and what is left out."""

import pytest

from infer_fast.plots import PLOT_FILES, draw_plots, overlapping_tick_labels, write_plots

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


def crowded(ipcs):
    """ImageNet-1k-like results: four methods whose compression ratios lie close together
    (within 5%) over less than two decades, many ipcs, 300 epochs."""
    rows, runs = [], {}
    for ipc in ipcs:
        for k, (method, label) in enumerate((("infer", "INFER"), ("infer_dyn", "INFER+Dyn"), ("sre2l", "SRe2L"),
                                             ("random", "Random"))):
            rows.append({"method": method, "label": label, "ipc": ipc, "accuracy_mean": 0.2 + 0.1 * k + ipc / 1000,
                         "accuracy_std": 0.01, "compression_ratio_percent": 0.078 * ipc * (1 + 0.02 * k),
                         "feature_duplication": 0.8 - ipc / 1000 + k / 100})
            runs[f"{method}/ipc{ipc}/seed0"] = {"history": [{"epoch": e, "test_accuracy": 0.1 + e / 1000}
                                                            for e in range(0, 301, 25)]}
    return {"config": {"dataset": "imagenet-1k"}, "table": rows, "runs": runs}


def shown_labels(axis):
    return [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("ipcs", [(10, 50), (1, 10, 50, 100), (10, 20, 30, 40, 50), (1, 2, 5, 10, 20, 50, 100, 200)])
def test_tick_labels_do_not_overlap(ipcs):
    """Close compression ratios over under two decades made matplotlib's log axis label its
    minor ticks (2x10^-1, 3x10^-1, ...) on top of each other: every tick label of every plot
    now stands clear of the others once drawn, the compression axis keeps at least two plain
    labels and the ipc axes label every ipc."""
    import matplotlib.pyplot as plt

    figures = draw_plots(crowded(ipcs))
    assert set(figures) == set(PLOT_FILES)
    try:
        for name, fig in figures.items():
            fig.canvas.draw()
            assert overlapping_tick_labels(fig) == [], name
        compression = shown_labels(figures["compression"].axes[0].xaxis)
        assert len(compression) >= 2 and all("times" not in t for t in compression), compression
        for name in ("ipc", "duplication"):
            assert shown_labels(figures[name].axes[0].xaxis) == [str(i) for i in ipcs], name
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_overlap_check_sees_overlapping_labels():
    from infer_fast.plots import new_figure

    fig, ax = new_figure(figsize=(3, 2))
    ax.set_xticks([0.0, 0.01, 1.0], ["a long label", "another long label", "far"])
    ax.set_xlim(0, 1)
    fig.canvas.draw()
    assert overlapping_tick_labels(fig) == [("x", 0.0, 0.01)]


def method_run_results():
    """A run's results: INFER, INFER+Dyn (fewer epochs: evaluated once) and Random at ipc 2 and
    4, 3 seeds; the file also holds an earlier session's runs (seed 3, SRe2L) the table leaves out."""
    methods = (("infer", "INFER", 4), ("infer_dyn", "INFER+Dyn", 1), ("random", "Random", 4))
    rows, runs = [], {}
    for ipc in (2, 4):
        for k, (method, label, epochs) in enumerate(methods):
            rows.append({"method": method, "label": label, "ipc": ipc, "accuracy_mean": 0.5, "accuracy_std": 0.01,
                         "compression_ratio_percent": ipc * (1 + k / 10), "feature_duplication": 0.9 if k < 2 else 0.7})
            for seed in range(4):
                runs[f"{method}/ipc{ipc}/seed{seed}"] = {"history": [
                    {"epoch": e, "test_accuracy": 0.3 + k / 10 + e / 100 + seed / 100} for e in range(1, epochs + 1)]}
        runs[f"sre2l/ipc{ipc}/seed0"] = {"history": [{"epoch": e, "test_accuracy": 0.2} for e in range(1, 5)]}
    return {"config": {"dataset": "fashion-mnist-mini", "seeds": 3}, "table": rows, "runs": runs}


def test_epoch_plot_shows_the_tables_methods_per_ipc():
    """One panel per ipc, one line per method of the table (the mean over its 3 seeds), named
    by its label in one legend that stays inside the picture; a method evaluated once is a
    point; epochs are whole; every method keeps its colour in every plot."""
    import matplotlib.pyplot as plt

    figures = draw_plots(method_run_results())
    try:
        fig = figures["epochs"]
        fig.canvas.draw()
        panels = fig.axes
        assert [ax.get_title() for ax in panels] == ["ipc 2", "ipc 4"]
        legends = [ax.get_legend() for ax in panels if ax.get_legend() is not None]
        assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == ["INFER", "INFER+Dyn", "Random"]
        assert "3 seeds" in legends[0].get_title().get_text()
        box, frame = legends[0].get_window_extent(), fig.bbox
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for ax in panels:
            lines = ax.get_lines()
            assert [len(line.get_xdata()) for line in lines] == [4, 1, 4]  # (INFER+Dyn's one evaluation: a point)
            assert lines[0].get_ydata()[0] == pytest.approx(100 * 0.32)  # (the mean over seeds 0-2, not seed 3)
            assert all(float(x).is_integer() for x in ax.xaxis.get_majorticklocs())
        accuracy_colours = [bars.lines[0].get_color() for bars in figures["compression"].axes[0].containers]
        assert [line.get_color() for line in panels[0].get_lines()] == accuracy_colours
        assert len(set(accuracy_colours)) == 3
        assert overlapping_tick_labels(fig) == []
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_every_method_looks_different():
    from infer_fast.plots import _method_styles

    styles = _method_styles([{"label": f"method {i}"} for i in range(14)])
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 14


def test_equal_feature_duplication_is_one_line_named_for_both():
    """INFER and INFER+Dyn train on one set: their feature duplication is one line,
    "INFER = INFER+Dyn", not one drawn over the other."""
    import matplotlib.pyplot as plt

    figures = draw_plots(method_run_results())
    try:
        legend = figures["duplication"].axes[0].get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["INFER = INFER+Dyn", "Random"]
        assert len(figures["duplication"].axes[0].get_lines()) == 2
    finally:
        for fig in figures.values():
            plt.close(fig)


@pytest.mark.parametrize("label", ["_mine", "mine ($\\ell_2$, x$^$)", "cost $5 vs $8"])
def test_a_sets_label_is_drawn_as_written_and_named_in_the_legends(tmp_path, label):
    """A label starting with "_" was left out of the legends (matplotlib's rule for hidden
    artists), one with "$" was parsed as math text: drawn in italics, or ending the run after all
    its work on a parse error."""
    data = results()
    for row in data["table"]:
        if row["method"] == "random":
            row["label"] = label
    figures = draw_plots(data)
    try:
        for name, shown in (("compression", ["INFER", label]), ("ipc", ["INFER", label]),
                            ("duplication", [f"INFER = {label}"])):  # (equal series: one line)
            legend = figures[name].axes[0].get_legend()
            assert [t.get_text() for t in legend.get_texts()] == shown, name
    finally:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
    assert set(write_plots(data, tmp_path)) == set(PLOT_FILES)
