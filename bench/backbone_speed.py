"""Per-epoch training seconds: our SASRec vs RecBole 1.2.1's SASRec on ML-100K, in one run.

    python bench/backbone_speed.py [--epochs 3] [--recbole-epochs 1] [--threads 2] [--recbole-venv DIR]

Why a separate venv: RecBole 1.2.1 pins old packages (colorlog, colorama, ray) and needs shims on
numpy 2 / torch 2.6+; it must never touch the project's venv. The venv (default ``bench/.venv``,
gitignored) is created on first use with the torch wheel the project uses, RecBole with
``--no-deps`` and its runtime deps minus ray. Shims, applied in the child process only:
numpy 2 aliases (np.float, np.int, ...), ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, no ray; pandas < 3
(RecBole predates copy-on-write).

What one "epoch" is on each side (both see every training target of every user once):
- RecBole: every prefix of every training sequence is a sample (~97k for ML-100K), CE loss over
  all items (its default SASRec config), MAX_ITEM_LIST_LENGTH 50, 2 layers, 2 heads, d=64.
- ours: one left-padded sequence per user (943), every position predicts the next item, BCE with
  one sampled negative (the SASRec paper's recipe), max_len 50, 2 layers, 1 head, d=64.
So the ratio compares wall-clock cost per pass over the same supervision, not identical math.
Both sides get the same thread count and OMP_WAIT_POLICY=PASSIVE; RecBole's evaluation is
timed separately from its training epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RECBOLE_DEPS = [
    "numpy", "scipy", "pandas>=2.2.2,<3", "tqdm", "colorlog==4.7.2", "colorama==0.4.4", "scikit-learn", "pyyaml",
    "tensorboard", "thop", "tabulate", "plotly", "texttable", "psutil",
]

CHILD = textwrap.dedent(
    r'''
    import json, os, sys, time
    import numpy as np
    for name, typ in {"float": float, "int": int, "bool": bool, "object": object, "long": int,
                      "complex": complex, "str": str, "unicode": str}.items():
        if not hasattr(np, name):
            setattr(np, name, typ)          # numpy 2 removed these aliases; RecBole 1.2.1 still uses some
    for name, typ in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_,
                      "string_": np.bytes_, "bool8": np.bool_}.items():
        if name not in np.__dict__:
            setattr(np, name, typ)          # RecBole's compatibility_settings() reads these
    import torch
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    args = json.loads(sys.argv[1])
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "data_path": args["data_path"], "checkpoint_dir": args["out"], "epochs": args["epochs"],
        "seed": 0, "reproducibility": True, "show_progress": False, "use_gpu": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "train_neg_sample_args": None, "loss_type": "CE",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "log_wandb": False, "state": "WARNING",
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epochs, cpu = [], []
    print("PROGRESS data ready, training", flush=True)
    for e in range(args["epochs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = trainer._train_epoch(train_data, e, show_progress=False)
        epochs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"PROGRESS epoch {e} {epochs[-1]:.1f} s wall {cpu[-1]:.1f} s cpu", flush=True)
    t0 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False) if args["test"] else {}
    print("RESULT " + json.dumps({
        "epoch_seconds": epochs, "epoch_cpu_seconds": cpu, "eval_seconds": time.perf_counter() - t0,
        "train_samples": len(train_data.dataset), "test": {k: float(v) for k, v in test.items()},
        "config": {k: config[k] for k in ("MAX_ITEM_LIST_LENGTH", "hidden_size", "n_layers", "n_heads",
                                          "train_batch_size", "loss_type", "learning_rate")},
    }))
    '''
)


def ensure_recbole_venv(venv: Path) -> Path:
    """Create the RecBole venv once; returns its python. Installs through pip (the registry)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import recbole"], capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} (RecBole 1.2.1 + deps, no ray) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    import torch  # the same torch build as the project, so both sides run the same kernels

    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"] + RECBOLE_DEPS, check=True)
    subprocess.run(pip + ["--no-deps", "recbole==1.2.1"], check=True)
    return py


def recbole_data_dir(raw: Path) -> Path:
    """RecBole wants <data_path>/ml-100k/ml-100k.inter: symlink the shared atomic files there."""
    root = Path(tempfile.mkdtemp(prefix="recbole-data-"))
    (root / "ml-100k").mkdir()
    for f in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        (root / "ml-100k" / f).symlink_to(raw / f)
    return root


def run_recbole(py: Path, epochs: int, threads: int, raw: Path, test: bool) -> dict:
    data = recbole_data_dir(raw)
    out = Path(tempfile.mkdtemp(prefix="recbole-out-"))
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "OMP_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    args = json.dumps({"data_path": str(data), "out": str(out), "epochs": epochs, "test": test})
    proc = subprocess.Popen([str(py), "-c", CHILD, args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=out)
    lines = []
    for ln in proc.stdout:  # echo progress: one RecBole epoch is minutes long
        lines.append(ln)
        if ln.startswith("PROGRESS"):
            print("  recbole:", ln[len("PROGRESS "):].strip(), flush=True)
    proc.wait()
    proc.stderr_text = proc.stderr.read()
    line = next((ln for ln in lines if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"RecBole run failed (exit {proc.returncode}):\n{proc.stderr_text[-4000:]}")
    return json.loads(line[len("RESULT "):])


def run_ours(epochs: int, threads: int, max_len: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from slim.data.dataset import load_dataset
    from slim.eval.metrics import evaluate
    from slim.recommenders.fit_config import FitConfig
    from slim.recommenders.train import fit

    ds = load_dataset("ml-100k")
    cfg = FitConfig(backbone="sasrec", variant="id", epochs=epochs, eval_every=epochs, patience=10**6,
                    max_len=max_len, dim=64, layers=2, heads=1)
    with tempfile.TemporaryDirectory() as d:
        c0 = time.process_time()
        fm = fit(ds, cfg, d, progress=False, force=True)
        cpu = time.process_time() - c0  # includes building arrays and the one validation pass: conservative
    return {
        "epoch_seconds": [r["train_seconds"] for r in fm.record["history"]],
        "epoch_cpu_seconds_upper_bound": cpu / epochs,
        "train_sequences": int(ds.n_users),
        "train_targets": int((ds.lengths - 3).sum()),
        "test_after_these_epochs": evaluate(fm.score, ds, "test", "full"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="our SASRec epochs to time")
    ap.add_argument("--recbole-epochs", type=int, default=1, help="RecBole epochs to time (~5 min each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=50, help="ours; RecBole's default MAX_ITEM_LIST_LENGTH is 50")
    ap.add_argument("--recbole-venv", type=Path, default=REPO / "bench" / ".venv")
    ap.add_argument("--raw", type=Path, default=None, help="dir with ml-100k.inter/.item/.user")
    ap.add_argument("--recbole-test", action="store_true", help="also evaluate RecBole on the test split")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from slim.data.dataset import resolve_data_dir

    raw = args.raw or resolve_data_dir() / "ml-100k" / "raw"
    py = ensure_recbole_venv(args.recbole_venv)
    t0 = time.perf_counter()
    ours = run_ours(args.epochs, args.threads, args.max_len)
    print(f"ours: {ours['epoch_seconds']} s/epoch wall; now RecBole ...", flush=True)
    rb = run_recbole(py, args.recbole_epochs, args.threads, raw, args.recbole_test)
    ours_s = sum(ours["epoch_seconds"]) / len(ours["epoch_seconds"])
    rb_s = sum(rb["epoch_seconds"]) / len(rb["epoch_seconds"])
    ours_c = ours["epoch_cpu_seconds_upper_bound"]
    rb_c = sum(rb["epoch_cpu_seconds"]) / len(rb["epoch_cpu_seconds"])
    print(json.dumps({"ours": ours, "recbole": rb}, indent=1))
    print(f"machine load at end: {os.getloadavg()[0]:.1f} (1-min avg); wall {time.perf_counter() - t0:.0f} s")
    print(f"ours    SASRec: {ours_s:8.2f} s/epoch  ({args.epochs} epochs, {ours['train_sequences']} sequences, "
          f"{ours['train_targets']} targets, max_len {args.max_len}, {args.threads} threads)")
    print(f"RecBole SASRec: {rb_s:8.2f} s/epoch  ({args.recbole_epochs} epochs, {rb['train_samples']} samples)")
    print(f"ratio RecBole/ours: {rb_s / ours_s:.1f}x faster per epoch (wall clock)")
    print(f"CPU seconds per epoch: ours <= {ours_c:.2f}, RecBole {rb_c:.2f}; ratio {rb_c / ours_c:.1f}x "
          "(CPU time is the fairer number on a shared machine)")


if __name__ == "__main__":
    main()
