"""A replay report's plot. Only matplotlib is imported here, so a replay's writer process can load
it (``prepare``) while the replay runs and draw the plot when the job ends."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any


def prepare() -> None:
    """Import matplotlib with its non-interactive backend (a quarter of a second, done once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Timeline of mean sentiment per ticker with the alert windows shaded (red: fired in this run,
    grey: lost against the baseline), and the label flips against the baseline."""
    prepare()
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    tickers = report["timeline"]["tickers"]
    flips = (report.get("scores") or {}).get("flips") or {}
    rows = max(1, len(tickers))
    fig, axes = plt.subplots(
        rows + 1, 1, figsize=(11, 1.9 * rows + 3), squeeze=False,
        gridspec_kw={"height_ratios": [1.0] * rows + [1.2]},
    )  # fmt: skip
    for ax, (ticker, points) in zip(axes[:, 0], tickers.items(), strict=False):
        times = [datetime.fromisoformat(p[0]) for p in points]
        # one artist per kind (a volume band, a line, one span collection per status): fast to draw
        # however many buckets and alerts there are
        ax.fill_between(times, [p[1] / 20 for p in points], step="post", color="#9ecae1", alpha=0.6)
        ax.plot(times, [p[2] for p in points], marker=".", lw=1, color="#1f4e79")
        for lost, colour in ((True, "#888888"), (False, "#d62728")):
            spans = [
                (mdates.date2num(start), (end - start).total_seconds() / 86400)
                for start, end in (
                    (
                        datetime.fromisoformat(a["window_start"]),
                        datetime.fromisoformat(a["window_end"]),
                    )
                    for a in report["alerts"]
                    if a["ticker"] == ticker and (a["status"] == "lost") == lost
                )
            ]
            if spans:
                ax.broken_barh(spans, (-1.05, 2.1), color=colour, alpha=0.25)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel(ticker, rotation=0, labelpad=25)
        if len(times) > 1 and times[-1] > times[0]:  # one point has no range to label
            # 10: the fewest that every span fits (just under 5 h, 5 days) without a warning
            locator = mdates.AutoDateLocator(maxticks=10)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if not tickers:
        axes[0, 0].text(0.5, 0.5, "no documents in the period", ha="center", va="center")
    axes[0, 0].set_title(
        f"{report['run_id']}: mean score per {report['timeline']['bucket_minutes']} min "
        f"(band: documents / 20; red: alerts, grey: baseline alerts lost)"
    )
    ax = axes[-1, 0]
    counts = report["alert_counts"]
    labels = ["run", "baseline", "matched", "shifted", "gained", "lost"]
    values = [counts.get(k) or 0 for k in labels]
    if flips:
        labels += list(flips)
        values += list(flips.values())
    ax.barh(labels, values, color=["#1f4e79"] * 6 + ["#ff7f0e"] * len(flips))
    ax.set_title("alerts against the baseline, and label flips (baseline -> run)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.96, bottom=0.05, hspace=0.45)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
