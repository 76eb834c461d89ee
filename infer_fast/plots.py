"""Pictures of a run's results (matplotlib, Agg backend: no display needed).

    paths = write_plots(results, "runs/fmnist")   # PNG files beside results.md

- ``accuracy-vs-compression.png``: test accuracy against the compression ratio, one line per
  method over its ipc values (the INFER paper's Figure 1);
- ``accuracy-vs-ipc.png``: test accuracy against images per class;
- ``feature-duplication-vs-ipc.png``: mean same-class cosine similarity of the teacher's
  features against ipc (the paper's Figure 4, left);
- ``student-accuracy-per-epoch.png``: each method's students' test accuracy over the
  epochs, when the students were evaluated during training (``student: {eval_every: N}``).

Accuracies are the mean over seeds with the standard deviation as error bars. A plot whose
data is missing (one ipc only, no per-epoch evaluations) is not drawn."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

PLOT_FILES = {
    "compression": "accuracy-vs-compression.png",
    "ipc": "accuracy-vs-ipc.png",
    "duplication": "feature-duplication-vs-ipc.png",
    "epochs": "student-accuracy-per-epoch.png",
}
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever the environment's default backend
    import matplotlib.pyplot as plt

    return plt


def _by_method(rows: Sequence[Dict[str, Any]], *keys: str) -> Dict[str, List[Dict[str, Any]]]:
    """Rows with a value for every one of ``keys``, grouped by method label, by ipc."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if all(row.get(key) is not None for key in keys):
            groups.setdefault(row["label"], []).append(row)
    return {label: sorted(group, key=lambda r: r["ipc"]) for label, group in groups.items()}


def _save(plt, fig, path: str) -> str:
    from ._io import write_atomically

    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), fsync=False)
    plt.close(fig)
    return path


def _accuracy_plot(plt, rows, x_key: str, x_label: str, title: str, path: str, log_x: bool) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, group in _by_method(rows, x_key, "accuracy_mean").items():
        ax.errorbar([r[x_key] for r in group], [100 * r["accuracy_mean"] for r in group],
                    yerr=[100 * r["accuracy_std"] for r in group], marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def write_plots(results: Dict[str, Any], out_dir) -> Dict[str, str]:
    """The plots of a run (``results`` as in results.json) written into ``out_dir``; returns
    {plot name: path} of those drawn (see the module docstring)."""
    plt = _pyplot()
    rows = results.get("table") or []
    from .data.registry import dataset_label

    dataset = results.get("config", {}).get("dataset")
    dataset = dataset_label(dataset) if dataset else ""
    path = lambda name: os.path.join(os.fspath(out_dir), PLOT_FILES[name])  # noqa: E731
    written: Dict[str, str] = {}
    if rows:
        written["compression"] = _accuracy_plot(plt, rows, "compression_ratio_percent", "compression ratio (%)",
                                                f"{dataset}: accuracy vs compression", path("compression"), True)
    if len({r["ipc"] for r in rows}) > 1:
        written["ipc"] = _accuracy_plot(plt, rows, "ipc", "images per class", f"{dataset}: accuracy vs ipc",
                                        path("ipc"), False)
        duplication = _by_method(rows, "feature_duplication")
        if duplication:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for label, group in duplication.items():
                ax.plot([r["ipc"] for r in group], [r["feature_duplication"] for r in group], marker="o", label=label)
            ax.set_xlabel("images per class")
            ax.set_ylabel("feature duplication (same-class cosine)")
            ax.set_title(f"{dataset}: feature duplication vs ipc")
            ax.grid(True, alpha=0.3)
            ax.legend()
            written["duplication"] = _save(plt, fig, path("duplication"))
    curves = {key: [(h["epoch"], h["test_accuracy"]) for h in run.get("history", []) if "test_accuracy" in h]
              for key, run in sorted(results.get("runs", {}).items())}
    curves = {key: points for key, points in curves.items() if len(points) > 1}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, points in curves.items():
            ax.plot([e for e, _ in points], [100 * a for _, a in points], label=key.replace("/", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: students during training")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        written["epochs"] = _save(plt, fig, path("epochs"))
    return written
