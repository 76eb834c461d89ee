"""Pictures of a run's results (matplotlib figures drawn by Agg outside pyplot: no display needed,
and the caller's backend and pyplot figures left as they are).

    paths = write_plots(results, "runs/fmnist")   # PNG files beside results.md

- ``accuracy-vs-compression.png``: test accuracy against the compression ratio (log axis),
  one line per method over its ipc values (the INFER paper's Figure 1); a method whose students
  the teachers label per batch (INFER+Dyn, RDED: its ratio counts no labels, but training needs
  the teachers) hollow, "(labels from teachers)" in the legend;
- ``accuracy-vs-ipc.png``: test accuracy against images per class (log axis, a tick at
  every ipc of the run);
- ``feature-duplication-vs-ipc.png``: mean same-class cosine similarity of the teacher's
  features against ipc (the paper's Figure 4, left; the same ipc axis); methods of equal
  values at every ipc (INFER and INFER+Dyn: one set) are one line, "INFER = INFER+Dyn";
- ``student-accuracy-per-epoch.png``: the students' test accuracy over the epochs, when they
  were evaluated during training (``student: {eval_every: N}``): one panel per ipc, a line
  per method (the mean over the table's seeds, a band of one std), a method whose students
  were evaluated once (fewer epochs) a point; one legend beside the panels.

Accuracies are the mean over seeds with the standard deviation as error bars (bands per
epoch). Each method keeps its colour in every plot. A plot whose data is missing (one ipc
only, no per-epoch evaluations) is not drawn. Tick labels do not
overlap: the compression axis labels the densest of 1..9 / 1, 2, 5 / 1 per decade whose
labels fit, and on every axis a label that would still touch another is left off (its tick
mark stays)."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import statistics
from typing import Any, Dict, List, Sequence, Tuple

from .data.registry import dataset_label
from .set_keys import RunKey, SetKey

PLOT_FILES = {
    "compression": "accuracy-vs-compression.png",
    "ipc": "accuracy-vs-ipc.png",
    "duplication": "feature-duplication-vs-ipc.png",
    "epochs": "student-accuracy-per-epoch.png",
}
DPI = 120
# labelled ticks per decade of the compression axis, densest first: the first that fits is used
LOG_TICK_LEVELS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,))
TICK_LABEL_GAP_PX = 4  # the least room between two tick labels (at the figure's drawing dpi)
# a method's look: a colour of matplotlib's 10 (its default cycle), then, past 10 methods, the
# same colours again with another line style
COLOURS = 10
LINE_STYLES = ("-", "--", ":", "-.")
EPOCH_PANELS_PER_ROW = 3  # student-accuracy-per-epoch.png: panels (one per ipc) side by side
# accuracy-vs-compression.png: the legend's note on a method labelled per batch (drawn hollow)
PER_BATCH_LEGEND = " (labels from teachers)"


def new_figure(nrows: int = 1, ncols: int = 1, **subplots: Any):
    """(figure, axes) drawn by Agg, outside pyplot: no backend switch (a notebook's or an
    IPython session's own stays as it was), no figure registered with pyplot to close, and the
    figure still shows inline in a notebook and saves as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=subplots.pop("figsize", None))
    FigureCanvasAgg(fig)  # (a renderer to measure tick labels with, before any drawing)
    return fig, fig.subplots(nrows, ncols, **subplots)


def _by_method(rows: Sequence[Dict[str, Any]], *keys: str) -> Dict[str, List[Dict[str, Any]]]:
    """Rows with a value for every one of ``keys``, grouped by method label, by ipc."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if all(row.get(key) is not None for key in keys):
            groups.setdefault(row["label"], []).append(row)
    return {label: sorted(group, key=lambda r: r["ipc"]) for label, group in groups.items()}


def _method_styles(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, str]]:
    """{method label: matplotlib line properties}, in the table's order: each method is drawn
    alike in every plot, and no two methods alike (COLOURS, then LINE_STYLES)."""
    labels = list(dict.fromkeys(row["label"] for row in rows))
    return {label: {"color": f"C{i % COLOURS}", "linestyle": LINE_STYLES[i // COLOURS % len(LINE_STYLES)]}
            for i, label in enumerate(labels)}


def _equal_series_merged(groups: Dict[str, List[Dict[str, Any]]], key: str) -> Dict[str, List[Dict[str, Any]]]:
    """``groups`` (by method label, by ipc) with the methods whose ``key`` values are equal at
    every ipc as one series labelled "A = B" (INFER and INFER+Dyn measure one set: drawn apart,
    the later line hides the earlier)."""
    equal: Dict[Tuple, List[str]] = {}
    for label, group in groups.items():
        equal.setdefault(tuple((r["ipc"], r[key]) for r in group), []).append(label)
    return {" = ".join(labels): groups[labels[0]] for labels in equal.values()}


# ---- tick labels --------------------------------------------------------------------------------

def _drawn_labels(fig, axis) -> List[Tuple[float, Any]]:
    """(tick position, window extent) of the tick labels ``axis`` draws (in view, with text),
    majors first, as the figure's renderer places them."""
    renderer = fig.canvas.get_renderer()
    axis.get_tightbbox(renderer)  # places the ticks and their labels (without drawing the figure)
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                        (axis.get_minorticklocs(), axis.get_minor_ticks)):
        for loc, tick in zip(locs, ticks(len(locs))):
            if lo <= loc <= hi and tick.label1.get_visible() and tick.label1.get_text():
                out.append((float(loc), tick.label1.get_window_extent(renderer)))
    return out


def _touch(a, b, gap: float = 0.0) -> bool:
    """Whether two boxes overlap or come closer than ``gap`` pixels."""
    return a.x0 < b.x1 + gap and b.x0 < a.x1 + gap and a.y0 < b.y1 + gap and b.y0 < a.y1 + gap


def overlapping_tick_labels(fig) -> List[Tuple[str, float, float]]:
    """(axis, position, position) of every pair of tick labels of ``fig`` that overlap as
    drawn: empty for a readable figure."""
    return [(name, p, q) for ax in fig.axes for name, axis in (("x", ax.xaxis), ("y", ax.yaxis))
            for (p, a), (q, b) in itertools.combinations(_drawn_labels(fig, axis), 2) if _touch(a, b)]


def _plain_numbers(axis) -> None:
    """Tick labels as plain numbers ("0.2", "5", "100") rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _log_ticks(fig, axis) -> None:
    """Label the log ``axis`` with the densest of LOG_TICK_LEVELS whose labels fit with at
    least two in view (else the sparsest); unlabelled marks at 1..9 per decade."""
    from matplotlib.ticker import LogLocator, NullFormatter

    _plain_numbers(axis)
    axis.set_minor_locator(LogLocator(base=10, subs=LOG_TICK_LEVELS[0], numticks=100))
    axis.set_minor_formatter(NullFormatter())
    for subs in LOG_TICK_LEVELS:
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=100))
        labels = _drawn_labels(fig, axis)
        if len(labels) >= 2 and not any(_touch(a, b, TICK_LABEL_GAP_PX)
                                        for (_, a), (_, b) in itertools.combinations(labels, 2)):
            return


def _leave_off_touching_labels(fig, axis) -> None:
    """Keep the tick labels of ``axis`` that do not touch one kept before (majors first,
    then in order); the others' ticks stay as unlabelled marks."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    labels = _drawn_labels(fig, axis)
    kept: List[Tuple[float, Any]] = []
    for loc, box in labels:
        if not any(_touch(box, other, TICK_LABEL_GAP_PX) for _, other in kept):
            kept.append((loc, box))
    if len(kept) == len(labels):
        return
    positions = {loc for loc, _ in kept}
    marks = sorted(set(axis.get_majorticklocs()) | set(axis.get_minorticklocs()))
    formatter = axis.get_major_formatter()  # kept: a label's text depends on its position only
    axis.set_major_locator(FixedLocator(sorted(positions)))
    axis.set_major_formatter(formatter)
    axis.set_minor_locator(FixedLocator([m for m in marks if m not in positions]))
    axis.set_minor_formatter(NullFormatter())


def _finish(fig, log_x: bool = False):
    """Lay ``fig`` out with tick labels that do not overlap (``log_x``: choose the log x
    axis's ticks first)."""
    fig.tight_layout()
    for ax in fig.axes:
        if log_x:
            _log_ticks(fig, ax.xaxis)
        for axis in (ax.xaxis, ax.yaxis):
            _leave_off_touching_labels(fig, axis)
    return fig


def _ipc_axis(ax, rows) -> None:
    """ipc on a log axis with a tick at every ipc of the run (1, 10 and 50 stay apart)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted({r["ipc"] for r in rows})))
    ax.xaxis.set_minor_locator(NullLocator())
    _plain_numbers(ax.xaxis)
    ax.set_xlabel("images per class")


# ---- the plots ----------------------------------------------------------------------------------

def accuracy_series(rows: Sequence[Dict[str, Any]], x_key: str,
                    styles: Dict[str, Dict[str, str]]) -> Dict[str, Tuple[List[Dict[str, Any]], Dict[str, Any]]]:
    """{legend label: (rows by ipc, matplotlib properties)} of the accuracy plot against ``x_key``
    ("compression_ratio_percent" or "ipc"): one series per method, in its style (``styles``:
    :func:`_method_styles`). On the compression axis a method labelled per batch (INFER+Dyn,
    RDED) is drawn hollow and its label says so (PER_BATCH_LEGEND): its ratio counts no labels,
    but its students need the teachers while training; it is not cheaper than the others."""
    series = {}
    for label, group in _by_method(rows, x_key, "accuracy_mean").items():
        style: Dict[str, Any] = {"marker": "o", **styles[label]}
        if x_key == "compression_ratio_percent" and SetKey(group[0]["method"], group[0]["ipc"]).labelled_per_batch:
            style["markerfacecolor"] = "none"
            label += PER_BATCH_LEGEND
        series[label] = (group, style)
    return series


def _accuracy_plot(rows, x_key: str, title: str, styles):
    """Accuracy against the compression ratio (``x_key`` "compression_ratio_percent") or ipc."""
    fig, ax = new_figure(figsize=(5.5, 4))
    drawn = {}
    for label, (group, style) in accuracy_series(rows, x_key, styles).items():
        drawn[label] = ax.errorbar([r[x_key] for r in group], [100 * r["accuracy_mean"] for r in group],
                                   yerr=[100 * r["accuracy_std"] for r in group], capsize=3, **style)
    if x_key == "ipc":
        _ipc_axis(ax, rows)
    else:
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(list(drawn.values()), list(drawn))  # (given: matplotlib's legend() leaves out labels starting "_")
    return _finish(fig, log_x=x_key != "ipc")


def _epoch_curves(results: Dict[str, Any], rows) -> Dict[int, Dict[str, Dict[int, List[float]]]]:
    """{ipc: {method label: {epoch: test accuracies}}} of the student runs the table shows
    (results.table_runs: its rows' sets, the run's seeds), the methods in table order."""
    from .results import table_runs

    labels = {(row["method"], row["ipc"]): row["label"] for row in rows}
    order = list(dict.fromkeys(labels.values()))
    runs = [(RunKey.parse(text), run) for text, run in table_runs({**results, "table": rows}).items()]
    curves: Dict[int, Dict[str, Dict[int, List[float]]]] = {}
    for key, run in sorted(runs, key=lambda kr: order.index(labels[(kr[0].method, kr[0].ipc)])):
        for h in run.get("history", []):
            if "test_accuracy" in h:
                by_label = curves.setdefault(key.ipc, {}).setdefault(labels[(key.method, key.ipc)], {})
                by_label.setdefault(h["epoch"], []).append(h["test_accuracy"])
    return curves


def _epoch_plot(results: Dict[str, Any], rows, styles, dataset: str):
    """The students' accuracy per epoch (see the module docstring); None when no student was
    evaluated more than once."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    curves = _epoch_curves(results, rows)
    if not any(len(by_epoch) > 1 for by_label in curves.values() for by_epoch in by_label.values()):
        return None
    ipcs = sorted(curves)
    ncols = min(len(ipcs), EPOCH_PANELS_PER_ROW)
    nrows = math.ceil(len(ipcs) / ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(3.3 * ncols + 2.2, 2.8 * nrows + 0.7), sharey=True, squeeze=False)
    seeds = set()
    for ax, ipc in zip(axes.flat, ipcs):
        for label, by_epoch in curves[ipc].items():
            epochs = sorted(by_epoch)
            mean = [100 * statistics.fmean(by_epoch[e]) for e in epochs]
            std = [100 * statistics.pstdev(by_epoch[e]) for e in epochs]
            seeds.update(len(by_epoch[e]) for e in epochs)
            ax.plot(epochs, mean, marker="o", markersize=3, **styles[label])  # (one evaluation: a point)
            if any(std):
                ax.fill_between(epochs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                                color=styles[label]["color"], alpha=0.1, linewidth=0)
        ax.set_title(f"ipc {ipc}", fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # (epochs are whole)
        _plain_numbers(ax.xaxis)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(ipcs):]:
        fig.delaxes(ax)
    for i, ax in enumerate(axes.flat[:len(ipcs)]):
        if i + ncols >= len(ipcs):  # the lowest panel of its column
            ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    drawn = list(dict.fromkeys(label for by_label in curves.values() for label in by_label))
    fewest, most = min(seeds), max(seeds)
    over = "one seed" if most == 1 else f"mean ± std over {fewest if fewest == most else f'{fewest}-{most}'} seeds"
    axes[0, -1].legend([Line2D([], [], marker="o", markersize=3, **styles[label]) for label in drawn], drawn,
                       loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize="small", title=over,
                       title_fontsize="small", frameon=False)
    fig.suptitle(f"{dataset}: students' test accuracy during training")
    return _finish(fig)


def draw_plots(results: Dict[str, Any]) -> Dict[str, Any]:
    """{plot name: matplotlib Figure} of a run (``results`` as in results.json), laid out,
    those whose data is there (see the module docstring); outside pyplot (nothing to close; a
    notebook shows one as it is). Their text is
    drawn as written: a set's label is never read as matplotlib's math text (``$...$``)."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw_plots(results)


def _draw_plots(results: Dict[str, Any]) -> Dict[str, Any]:
    rows = results.get("table") or []
    dataset = results.get("config", {}).get("dataset")
    dataset = dataset_label(dataset) if dataset else ""
    styles = _method_styles(rows)
    figures: Dict[str, Any] = {}
    if rows:
        figures["compression"] = _accuracy_plot(rows, "compression_ratio_percent",
                                                f"{dataset}: accuracy vs compression", styles)
    if len({r["ipc"] for r in rows}) > 1:
        figures["ipc"] = _accuracy_plot(rows, "ipc", f"{dataset}: accuracy vs ipc", styles)
        duplication = _equal_series_merged(_by_method(rows, "feature_duplication"), "feature_duplication")
        if duplication:
            fig, ax = new_figure(figsize=(5.5, 4))
            lines = [ax.plot([r["ipc"] for r in group], [r["feature_duplication"] for r in group], marker="o",
                             **styles[group[0]["label"]])[0] for group in duplication.values()]
            _ipc_axis(ax, rows)
            ax.set_ylabel("feature duplication (same-class cosine)")
            ax.set_title(f"{dataset}: feature duplication vs ipc")
            ax.grid(True, alpha=0.3)
            ax.legend(lines, list(duplication))
            figures["duplication"] = _finish(fig)
    epochs = _epoch_plot(results, rows, styles, dataset)
    if epochs is not None:
        figures["epochs"] = epochs
    return figures


def write_plots(results: Dict[str, Any], out_dir) -> Dict[str, str]:
    """The plots of :func:`draw_plots` written into ``out_dir`` as PNG files (atomically);
    returns {plot name: path} of those drawn. A plot of PLOT_FILES not drawn this time (its
    data is not in this table, e.g. one ipc left) is removed: an earlier table's picture would
    stand beside this one's results."""
    from ._io import write_atomically

    written: Dict[str, str] = {}
    for name, fig in draw_plots(results).items():
        path = os.path.join(os.fspath(out_dir), PLOT_FILES[name])
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), fsync=False)
        written[name] = path
    for name, file in PLOT_FILES.items():
        if name not in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(os.fspath(out_dir), file))
    return written
