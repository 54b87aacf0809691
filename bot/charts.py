"""Charts people would rather look at than read: PnL over time as a PNG (matplotlib, Agg).

matplotlib is imported on the first chart, not with the bot: it costs about half a second of
start-up that a bot which never draws should not pay.
"""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import UTC, datetime

from core.trading.engine import PnlReport

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _days(moment: datetime) -> float:
    """Matplotlib's date number: days since its 1970 epoch."""
    return (moment - _EPOCH).total_seconds() / 86400


def pnl_png(report: PnlReport) -> bytes:
    """Total and per-core PnL (USDT) over the report's window, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    totals: dict[datetime, float] = defaultdict(float)
    for point in report.points:
        value = point.realized + point.unrealized
        series[point.core].append((point.ts, value))
        totals[point.ts] += value
    for core, values in sorted(series.items()):
        axes.plot(
            [_days(t) for t, _ in values],
            [v for _, v in values],
            linewidth=1.2,
            label=core,
        )
    if totals:
        moments = sorted(totals)
        axes.plot(
            [_days(t) for t in moments],
            [totals[t] for t in moments],
            linewidth=2.2,
            color="black",
            label="total",
        )
    else:
        axes.text(
            0.5, 0.5, "no PnL history yet", ha="center", va="center", transform=axes.transAxes
        )
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_title(f"PnL, last {report.window} (now {report.total:+,.2f} USDT)")
    axes.set_ylabel("USDT")
    axes.grid(alpha=0.3)
    if series:
        axes.legend(loc="upper left", fontsize="small")
    axes.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
