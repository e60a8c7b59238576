"""slim_train fits: export (fp16, refusals), reuse in place by fit(reuse_from=...), publish to the
in-process Hub of test_publish.py and download back through slim_eval --fits-from-hub.

Real ML-100K users, real MiniLM item vectors, real fits (2 epochs); the Hub is an HTTP server on
127.0.0.1 driven by the real huggingface_hub client.
"""
from __future__ import annotations

import json
import secrets
import shutil

import numpy as np
import pytest
import torch

from slim.recommenders.fit_config import FitConfig
from slim.recommenders.train import fit

pytest.importorskip("huggingface_hub")
from test_publish import FakeHub, files_under  # noqa: E402  (the same in-process Hub)

FAST = dict(dim=32, max_len=30, batch_size=16, lr=5e-3, epochs=2, eval_every=1)


def slim_train(*argv: str) -> None:
    from slim_train.__main__ import main

    main(list(argv))


@pytest.fixture(scope="module")
def small(ml100k):
    return ml100k.subset_users(np.arange(150), name="ml-100k-150u")


@pytest.fixture(scope="module")
def item_text(small):
    from slim.lm.encoders import TextEncoder, item_text_matrix

    return item_text_matrix(small, TextEncoder())


@pytest.fixture(scope="module")
def fitted(small, item_text, tmp_path_factory):
    """runs/<ds>/checkpoints with two complete fp32 fits: SASRec (ids) and SASRec+ (item text)."""
    src = tmp_path_factory.mktemp("runs") / "checkpoints"
    fits = {v: fit(small, FitConfig(backbone="sasrec", variant=v, **FAST), src,
                   item_text=item_text if v == "text" else None, progress=False) for v in ("id", "text")}
    return src, fits


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    src, _ = fitted
    dst = tmp_path_factory.mktemp("assets") / "checkpoints"
    slim_train("fits", "export", "--from", str(src), "--to", str(dst))
    return dst


def test_export_writes_fp16_weights_and_the_provenance_only(fitted, exported):
    from safetensors import safe_open

    src, fits = fitted
    assert sorted(p.name for p in exported.iterdir()) == sorted(fm.checkpoint_dir.name for fm in fits.values())
    for fm in fits.values():
        out = exported / fm.checkpoint_dir.name
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        for p in out.iterdir():
            assert p.stat().st_size < 20 * 1024 * 1024 and p.stat().st_mode & 0o044 == 0o044  # readable by a clone
        rec = json.loads((out / "config.json").read_text())
        assert rec["key"] == fm.record["key"] and rec["weights_dtype"] == "float16"
        assert (out / "model.safetensors").stat().st_size < (fm.checkpoint_dir / "model.safetensors").stat().st_size


def test_export_prints_the_total_size(fitted, tmp_path, capsys):
    src, _ = fitted
    slim_train("fits", "export", "--from", str(src), "--to", str(tmp_path / "to"), "--variants", "text")
    out = capsys.readouterr().out
    assert "exported 1 checkpoints (fp16)" in out and " MB in all" in out
    assert [p.name.split("-seed")[0] for p in (tmp_path / "to").iterdir()] == ["sasrec-text"]


def test_fit_loads_a_shipped_fp16_checkpoint_in_place_and_scores_in_fp32(small, item_text, fitted, exported, tmp_path):
    _, fits = fitted
    run_dir = tmp_path / "fresh-clone" / "checkpoints"
    users = torch.arange(small.n_users)
    for v, fm in fits.items():
        cfg = FitConfig(backbone="sasrec", variant=v, **FAST)
        got = fit(small, cfg, run_dir, item_text=item_text if v == "text" else None, progress=False,
                  reuse_from=[tmp_path / "nothing-here", exported])
        assert got.checkpoint_dir == exported / fm.checkpoint_dir.name  # loaded in place
        assert got.record["weights_dtype"] == "float16"
        assert {p.dtype for p in got.model.parameters()} == {torch.float32}
        s = got.score(users, "test")
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, fm.score(users, "test"), rtol=2e-2, atol=5e-2)
    assert not run_dir.exists()  # nothing copied, nothing trained
    # --refit: force trains into the run directory even though a shipped checkpoint matches
    forced = fit(small, FitConfig(backbone="sasrec", variant="id", **FAST), run_dir, progress=False, force=True,
                 reuse_from=[exported])
    assert forced.checkpoint_dir.parent == run_dir and (forced.checkpoint_dir / "model.safetensors").exists()


def test_incomplete_and_old_format_checkpoints_are_refused(fitted, tmp_path, capsys):
    src, fits = fitted
    runs = tmp_path / "runs"
    shutil.copytree(src, runs)
    # a fit still training: its directory has train_state.pt and no config.json yet
    training = runs / fits["id"].checkpoint_dir.name.replace("-seed0-", "-seed1-")
    training.mkdir()
    torch.save({"epoch": 1}, training / "train_state.pt")
    dst = tmp_path / "to"
    with pytest.raises(SystemExit, match=rf"{training.name}: incomplete"):
        slim_train("fits", "export", "--from", str(runs), "--to", str(dst))
    assert not dst.exists() or not any(dst.iterdir())  # nothing half-exported
    slim_train("fits", "export", "--from", str(runs), "--to", str(dst), "--skip-incomplete")
    assert f"skipped {training.name}: incomplete" in capsys.readouterr().out
    assert len(list(dst.iterdir())) == 2
    # a checkpoint of the previous format (keyed on the vectors' bytes, as the first shipped ones
    # were) can never match fit()'s key now: the same finished checkpoint, its record rewritten
    old = tmp_path / "old-format"
    ckpt = old / fits["id"].checkpoint_dir.name
    shutil.copytree(fits["id"].checkpoint_dir, ckpt)
    record = json.loads((ckpt / "config.json").read_text())
    record["key"]["format"] = 1
    (ckpt / "config.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="checkpoint format 1, not 2"):
        slim_train("fits", "export", "--from", str(old), "--to", str(tmp_path / "old"))


def test_export_replaces_a_stale_sibling_of_the_same_run(fitted, tmp_path):
    src, fits = fitted
    dst = tmp_path / "to"
    stale = dst / "sasrec-id-seed0-0123456789"  # same run, another key: fit() could never load it
    other = dst / "gru4rec-id-seed0-0123456789"
    for d in (stale, other):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    slim_train("fits", "export", "--from", str(src), "--to", str(dst))
    assert not stale.exists() and other.exists()


def test_export_keeps_the_same_fit_on_other_texts(fitted, tmp_path):
    """A sibling that differs only in its text inputs (an archived report's rationale file) stays;
    one whose fit config differs is stale and goes."""
    src, _ = fitted
    dst = tmp_path / "to"
    ours = json.loads(next(src.glob("sasrec-text-seed0-*/config.json")).read_text())
    other_texts = {**ours, "key": {**ours["key"], "item_text": {**ours["key"]["item_text"], "sha256": "0" * 16}}}
    other_config = {**ours, "key": {**ours["key"], "config": {**ours["key"]["config"], "lr": 0.5}}}
    kept, stale = dst / "sasrec-text-seed0-aaaaaaaaaa", dst / "sasrec-text-seed0-bbbbbbbbbb"
    for d, record in ((kept, other_texts), (stale, other_config)):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(record))
    slim_train("fits", "export", "--from", str(src), "--to", str(dst))
    assert kept.exists() and not stale.exists()


def test_publish_then_slim_eval_downloads_and_reuses(tmp_path, monkeypatch, capsys, data_dir):
    """slim_eval fits a 60-user sample; export; publish (dry run == pushed bytes); a fresh --out with
    --fits-from-hub loads the downloaded checkpoint instead of training, with the same numbers."""
    import huggingface_hub.constants

    from slim_eval.__main__ import main as slim_eval

    base = ["--dataset", "ml-100k", "--users", "60", "--epochs", "2", "--seeds", "1", "--backbones", "sasrec",
            "--variants", "id", "--protocol", "sampled", "--no-progress", "--no-shipped"]
    first = slim_eval([*base, "--out", str(tmp_path / "a")])
    dst = tmp_path / "assets-ml-100k"
    slim_train("fits", "export", "--from", str(tmp_path / "a" / "checkpoints"), "--to", str(dst))
    stage_dry, stage = tmp_path / "dry", tmp_path / "stage"
    slim_train("fits", "publish", "--repo", "me/slim-fits", "--from", str(dst), "--staging", str(stage_dry),
               "--dry-run")
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    assert (stage_dry / "model" / "README.md").exists()

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite is offline; 127.0.0.1 only
    with FakeHub() as hub:
        slim_train("fits", "publish", "--repo", "me/slim-fits", "--from", str(dst), "--staging", str(stage),
                   "--endpoint", hub.url)
        pushed = dict(hub.repos["model:me/slim-fits"]["files"])
        assert pushed == files_under(stage_dry / "model")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # slim_eval's own default
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        second = slim_eval([*base, "--out", str(tmp_path / "b"), "--fits-from-hub", "me/slim-fits"])
        # $SLIM_FITS_REPO does the same when no checkpoints are shipped for the dataset (--no-shipped here)
        monkeypatch.setenv("SLIM_FITS_REPO", "me/slim-fits")
        by_env = slim_eval([*base, "--out", str(tmp_path / "b2")])
        monkeypatch.delenv("SLIM_FITS_REPO")
        assert by_env["checkpoints_from"] == {str(tmp_path / "b2" / "hub-fits"): 1}
        assert hub.unknown == []
        assert {d for d in hub.downloads if d.endswith(".safetensors")} == {p for p in pushed if p.endswith(".safetensors")}
    out = capsys.readouterr()
    assert token not in out.out + out.err
    hub_dir = tmp_path / "b" / "hub-fits"
    name = next(p.parent.name for p in dst.glob("*/config.json"))
    assert (hub_dir / name / "model.safetensors").read_bytes() == (dst / name / "model.safetensors").read_bytes()
    assert not list((tmp_path / "b").glob("checkpoints/*"))  # nothing trained in the fresh run
    assert second["checkpoints_from"] == {str(hub_dir): 1}
    assert f"loaded from {hub_dir}" in out.out
    m1, m2 = (r["results"][0]["metrics"]["NDCG@10"]["mean"] for r in (first, second))
    assert m2 == pytest.approx(m1, abs=0.02)  # fp16 weights of the same model
    md = (tmp_path / "b" / "report.md").read_text()
    assert f"1 of 1 models were loaded from {hub_dir}" in md
    # --refit: the downloaded set is not even offered; the model is trained into <out>/checkpoints
    shutil.copytree(hub_dir, tmp_path / "c" / "hub-fits")
    third = slim_eval([*base, "--out", str(tmp_path / "c"), "--refit", "--fits-from-hub", "me/slim-fits"])
    assert "checkpoints_from" not in third and len(list((tmp_path / "c" / "checkpoints").glob("*/model.safetensors"))) == 1
