"""`entmtp bench --plot`: tok/s per method and task, accepted-length histograms,
and a per-step trace (root entropy, accepted length, tree) of one prompt."""
from __future__ import annotations

from pathlib import Path

from entmtp.errors import EntmtpError


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EntmtpError("--plot needs matplotlib: pip install matplotlib (or .[plot])") from None


def write_plots(summary: dict, records: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tasks = list(summary["tasks"])
    methods = list(dict.fromkeys(m for rows in summary["tasks"].values() for m in rows))

    # 1. tok/s per method, grouped by task.
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(tasks) * len(methods) / 3), 4))
    width = 0.8 / max(1, len(methods))
    for m_index, method in enumerate(methods):
        values = [summary["tasks"][t].get(method, {}).get("tokens_per_second", 0.0) for t in tasks]
        ax.bar([t + m_index * width for t in range(len(tasks))], values, width, label=method)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("tokens / s (total tokens / total time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "tokens_per_second.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 2. accepted-length histograms of the speculative methods.
    speculative = [m for m in methods if any(rows.get(m, {}).get("accepted_histogram")
                                             for rows in summary["tasks"].values())]
    if speculative:
        fig, axes = plt.subplots(1, len(speculative), figsize=(4 * len(speculative), 3.2), squeeze=False)
        for ax, method in zip(axes[0], speculative):
            counts = {}
            for rows in summary["tasks"].values():
                for k, v in rows.get(method, {}).get("accepted_histogram", {}).items():
                    counts[int(k)] = counts.get(int(k), 0) + v
            total = sum(counts.values())
            ax.bar(list(counts), [v / total for v in counts.values()])
            ax.set_title(method)
            ax.set_xlabel("draft tokens accepted per step")
        axes[0][0].set_ylabel("share of steps")
        fig.tight_layout()
        written.append(out / "accepted_length.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 3. one prompt's per-step trace: the first speculative record with steps.
    traced = next((r for r in records if r.get("accepted")), None)
    if traced is not None:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
        steps = range(1, len(traced["accepted"]) + 1)
        top.plot(steps, [e if e is not None else float("nan") for e in traced["entropy"]], lw=1)
        top.set_ylabel("root entropy (nats)")
        bottom.step(steps, traced["accepted"], where="mid", lw=1, label="accepted")
        names = list(dict.fromkeys(traced["trees"]))
        if len(names) > 1:
            bottom.step(steps, [names.index(t) for t in traced["trees"]], where="mid", lw=1, label="tree index")
        bottom.set_ylabel("accepted tokens")
        bottom.set_xlabel("decode step")
        bottom.legend(fontsize=8)
        top.set_title(f"{traced['task']} {traced['prompt_id']} - {traced['method']} (trees: {', '.join(names)})")
        fig.tight_layout()
        written.append(out / "trace.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
