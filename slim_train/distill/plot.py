"""The adapter's loss curve (``loss_curve.png``), drawn from metrics.json's ``curve``."""
from __future__ import annotations

from pathlib import Path


def loss_curve_png(metrics: dict, out: Path) -> Path | None:
    """Train and held-out loss against the optimizer step, from metrics.json's ``curve``.

    The numbers are in metrics.json already; the picture is what a reader checks first
    (over-fitting shows as the held-out curve turning up while the train curve keeps falling).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = metrics.get("curve") or []
    train = [(r["step"], r["loss"]) for r in curve if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in curve if r.get("val_loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for points, label, style in ((train, "train loss", "-"), (val, "held-out loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    data = metrics.get("data", {})
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (rationale tokens)",
           title=f"LoRA distillation: {data.get('train_examples', '?')} train / "
                 f"{data.get('val_examples', '?')} held-out users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
