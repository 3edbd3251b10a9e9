"""Plots of the cross-backend comparison report: ``curves.png``, ``throughput.png``, ``accuracy.png``.

:func:`write_plots` draws them from the summary of
:func:`kbench.compare.summary.summarize` with matplotlib's Agg backend (matplotlib is
the optional ``kbench[report]`` dependency, imported only when plotting).
"""

from __future__ import annotations

import os

from kbench import BACKENDS
from kbench.compare.summary import PLOTS
from kbench.compare.tables import fmt

COLORS = dict(zip(BACKENDS, ("tab:blue", "tab:orange", "tab:red")))


def _color(b: str, i: int) -> str:
    return COLORS.get(b, f"C{(i + 3) % 10}")


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)


def _save(fig, plt, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, PLOTS[name])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _phase_marks(ax, summary: dict) -> None:
    """A dotted vertical line where a new phase starts (recompiled, maybe more of the backbone trainable)."""
    ref = next((c for c in summary["curves"].values() if c.get("epoch")), {})
    for e0, e1, p0, p1 in zip(ref.get("epoch", []), ref.get("epoch", [])[1:], ref.get("phase", []),
                              ref.get("phase", [])[1:]):
        if p0 != p1:
            ax.axvline((e0 + e1) / 2, color="gray", linestyle=":", linewidth=1)
            ax.text((e0 + e1) / 2, 1.0, f" {p1}", transform=ax.get_xaxis_transform(), va="top", fontsize=7,
                    color="gray")


def _curves_plot(plt, summary: dict, title: str, out_dir: str) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for i, b in enumerate(summary["backends"]):
            c = summary["curves"].get(b["backend"]) or {}
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                pts = [(e, v) for e, v in zip(c.get("epoch", []), c.get(key, [])) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=_color(b["backend"], i),
                            label=f"{b['backend']} {'val' if key.startswith('val') else 'train'}")
        _phase_marks(ax, summary)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            _no_data(ax)
    fig.suptitle(title)
    return _save(fig, plt, out_dir, "curves")


def _throughput_plot(plt, backends: list[dict], title: str, out_dir: str) -> str:
    names = [b["backend"] for b in backends]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "train_images_per_s", "training"),
                           (axes[1], "inference_images_per_s", "inference")):
        vals = [b[key]["mean"] or 0.0 for b in backends]
        errs = [b[key]["std"] or 0.0 for b in backends]
        if names:
            bars = ax.bar(names, vals, yerr=errs, capsize=4, color=[_color(n, i) for i, n in enumerate(names)])
            ax.bar_label(bars, labels=[fmt(b[key]["mean"], ".1f") for b in backends], fontsize=8)
        else:
            _no_data(ax)
        ax.set_ylabel("images/s")
        sub = f" ({backends[0]['train_phase']})" if key.startswith("train") and backends else ""
        ax.set_title(f"{label} images/s{sub}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, plt, out_dir, "throughput")


def _accuracy_plot(plt, backends: list[dict], out_dir: str) -> str:
    names = [b["backend"] for b in backends]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(backends):
        acc = b["test_accuracy"]
        ax.errorbar([i], [acc["mean"]], yerr=[acc["std"] or 0.0], fmt="o", capsize=6, markersize=8,
                    color=_color(b["backend"], i))
        ax.scatter([i] * len(acc["values"]), acc["values"], s=14, color="black", alpha=0.5, zorder=3)
    if names:
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
    else:
        _no_data(ax)
    ax.set_ylabel("test top-1 accuracy")
    ax.set_title("test accuracy: mean ± std over seeds (dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, plt, out_dir, "accuracy")


def write_plots(summary: dict, out_dir: str) -> list[str]:
    """Draw ``curves.png`` (train solid / validation dashed loss and accuracy per
    epoch, mean over seeds, all backends overlaid), ``throughput.png`` (train and
    inference images/s per backend, std error bars) and ``accuracy.png`` (test top-1
    mean ± std per backend, seeds as dots). Backends without a completed run are
    left out (a figure with no data says so). Returns the paths.

    Raises:
        ImportError: matplotlib is not installed (``pip install kbench[report]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in summary["backends"] if b["completed"]]
    w = summary["workload"]
    title = f"{w.get('backbone')} @ {w.get('image_size')}px, {w.get('recipe')}"
    return [_curves_plot(plt, summary, title, out_dir), _throughput_plot(plt, backends, title, out_dir),
            _accuracy_plot(plt, backends, out_dir)]
