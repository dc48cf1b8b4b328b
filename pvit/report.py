"""The run report: ``report.md`` with tables, plus PNG plots of losses per stage and accuracy per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pvit.atomic import atomic_write_text


def metrics_rows(summary: dict) -> list[tuple[str, str, float]]:
    """(evaluator, metric, value) for every numeric metric of a run summary."""
    rows = []
    for ev, res in (summary.get("eval") or {}).items():
        for k, v in res.get("metrics", {}).items():
            if isinstance(v, (int, float)):
                rows.append((ev, k, float(v)))
    return rows


def _plots(summary: dict, run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    stages = [s for s in summary.get("stages", []) if s.get("losses")]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), squeeze=False)
        for ax, st in zip(axes[0], stages):
            xs, ys = zip(*st["losses"])
            ax.plot(xs, ys, lw=0.6, alpha=0.4, color="C0")
            w = max(1, len(ys) // 30)
            smooth = [sum(ys[max(0, i - w):i + 1]) / len(ys[max(0, i - w):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, color="C0")
            ax.set_title(f"stage {st['name']}")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
        fig.tight_layout()
        fig.savefig(plots / "loss.png", dpi=110)
        plt.close(fig)
        made.append("plots/loss.png")
    rows = [(ev, k, v) for ev, k, v in metrics_rows(summary) if k.startswith("accuracy")]
    if rows:
        fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows) + 1), 3))
        labels = [k.replace("accuracy/", "").replace("accuracy", "overall") for _, k, _ in rows]
        ax.bar(range(len(rows)), [v * 100 for _, _, v in rows], color="C2")
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        fig.tight_layout()
        fig.savefig(plots / "accuracy.png", dpi=110)
        plt.close(fig)
        made.append("plots/accuracy.png")
    return made


def _throughput(summary: dict) -> list[str]:
    """The stages' steps/s, FLOPs per step (counted on the first step), FLOP/s and MFU against the measured
    matmul peak, when the run measured them."""
    rows = [(s.get("name"), s["flops"]) for s in summary.get("stages", []) if (s.get("flops") or {}).get("mfu")]
    if not rows:
        return []
    out = ["", "## Throughput", "", "| stage | steps/s | FLOP per step | FLOP/s | peak FLOP/s (matmul probe) | MFU |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, f in rows:
        out.append(f"| {name} | {f['steps_per_s']:.2f} | {f['flops_per_step']:.3g} | {f['flops_per_s']:.3g} | "
                   f"{f['peak_flops_per_s']:.3g} | {100 * f['mfu']:.1f}% |")
    out.append(f"\nPeak measured for: {rows[0][1].get('peak_probe')}")
    return out


def write_report(summary: dict, run_dir: Path) -> Path:
    """Write ``report.md`` (what ran, parameters per stage, metrics per task) and the plots."""
    lines = [f"# pvit run: {summary.get('recipe')}", ""]
    plan: dict[str, Any] = summary.get("plan", {})
    lines += ["## Components", "", "| slot | component | parameters |", "|---|---|---:|"]
    for c in plan.get("components", []):
        lines.append(f"| {c['slot']} | {c['name']} | {c['parameters']:,} |")
    lines += ["", "## Stages", "", "| stage | data | trainable | trainable parameters | steps | seconds | final loss |",
              "|---|---|---|---:|---:|---:|---:|"]
    for p, s in zip(plan.get("stages", []), summary.get("stages", [])):
        fl = s.get("final_loss")
        lines.append(f"| {p['name']} | {p['data']} | {', '.join(p['trainable'])} | {p['trainable_total']:,} | "
                     f"{s.get('steps', '')} | {s.get('seconds', '')} | {fl:.4f} |" if fl is not None else
                     f"| {p['name']} | {p['data']} | {', '.join(p['trainable'])} | {p['trainable_total']:,} | | | |")
    lines += _throughput(summary)
    rows = metrics_rows(summary)
    if rows:
        lines += ["", "## Metrics", "", "| evaluator | metric | value |", "|---|---|---:|"]
        lines += [f"| {ev} | {k} | {v:.4f} |" for ev, k, v in rows]
        for ev, res in (summary.get("eval") or {}).items():
            proto = ", ".join(f"{k}: {v}" for k, v in res.get("protocol", {}).items())
            lines.append(f"\n{ev}: {res.get('n')} samples; protocol: {proto}")
    try:
        made = _plots(summary, run_dir)
    except Exception as e:  # plots are a convenience; the report must still be written
        made = []
        lines.append(f"\n(plots not written: {e})")
    if made:
        lines += ["", "## Plots", ""] + [f"![{m}]({m})" for m in made]
    lines += ["", f"Total time: {summary.get('seconds')} s", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
