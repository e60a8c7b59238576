"""publish: the real huggingface_hub upload path against an in-process HTTP Hub, no mocks.

The server on 127.0.0.1 answers the four calls a small upload makes (repo create, README YAML
validation, preupload -> "regular" for every file, NDJSON commit with base64 contents) and keeps
what it received; the test then compares those bytes with the --dry-run folder and checks the
token went only into the Authorization header. It also serves what it keeps back the way
``snapshot_download`` reads a repo (revision info, recursive tree, HEAD + GET on ``resolve``), so
tests/test_fits.py can publish fitted checkpoints and download them again.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("huggingface_hub")


class FakeHub:
    """Just enough of the Hub API for create_repo + upload_folder of regular (non-LFS) files."""

    def __init__(self):
        self.repos: dict[str, dict] = {}  # "model:ns/name" -> {"files": {path: bytes}, "commits": int}
        self.downloads: list[str] = []  # repo paths served by GET .../resolve/...
        self.requests: list[tuple[str, str, dict]] = []
        self.unknown: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _json(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, kind: str, rid: str):
                return hub.repos.get(f"{kind}:{rid}")

            def _resolve(self, head: bool) -> bool:
                """``/<ns>/<name>/resolve/<rev>/<path>``: a file's bytes (GET) or its metadata (HEAD)."""
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return False
                repo, fname = self._repo("model", f"{parts[0]}/{parts[1]}"), "/".join(parts[4:])
                if repo is None or fname not in repo["files"]:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                data = repo["files"][fname]
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit_id(repo))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    hub.downloads.append(fname)
                    self.wfile.write(data)
                return True

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, dict(self.headers)))
                if not self._resolve(head=True):
                    hub.unknown.append(f"HEAD {self.path}")
                    self._json(404, {"error": "not implemented in FakeHub"})

            def do_GET(self):
                hub.requests.append(("GET", self.path, dict(self.headers)))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
                    repo = self._repo("model", f"{parts[2]}/{parts[3]}")
                    if repo is None:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "RepoNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if len(parts) in (4, 6) and (len(parts) == 4 or parts[4] == "revision"):
                        return self._json(200, {"id": f"{parts[2]}/{parts[3]}", "sha": hub.commit_id(repo),
                                                "siblings": [{"rfilename": f} for f in sorted(repo["files"])]})
                    if len(parts) >= 6 and parts[4] == "tree":
                        files = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                 for f, b in sorted(repo["files"].items())]
                        return self._json(200, files)
                if self._resolve(head=False):
                    return
                hub.unknown.append(f"GET {self.path}")
                self._json(404, {"error": "not implemented in FakeHub"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    req = json.loads(body)
                    rid = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    hub.repos.setdefault(f"{req.get('type') or 'model'}:{rid}", {"files": {}, "commits": 0})
                    prefix = "" if (req.get("type") or "model") == "model" else f"{req['type']}s/"
                    return self._json(200, {"url": f"http://{self.headers['Host']}/{prefix}{rid}"})
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                if len(parts) == 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
                    repo_type, rid = parts[1].rstrip("s"), f"{parts[2]}/{parts[3]}"
                    repo = hub.repos.get(f"{repo_type}:{rid}")
                    if repo is None:
                        return self._json(404, {"error": "Repository not found"})
                    if parts[4] == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False, "oid": None} for f in files]})
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            v = item["value"]
                            assert v.get("encoding", "base64") == "base64"
                            repo["files"][v["path"]] = base64.b64decode(v["content"])
                    repo["commits"] += 1
                    oid = hub.commit_id(repo)
                    return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{rid}/commit/{oid}",
                                            "commitOid": oid, "pullRequestUrl": None})
                hub.unknown.append(f"POST {self.path}")
                return self._json(404, {"error": "not implemented in FakeHub"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def commit_id(repo: dict) -> str:
        return f"{repo['commits']:040x}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def adapter_and_teacher(tmp_path_factory):
    """A real (untrained, so cheap) peft adapter on the student + a metrics.json + teacher rows."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slim.student.hf_model import student_hf_path

    root = tmp_path_factory.mktemp("pub")
    adapter = root / "adapter"
    model = AutoModelForCausalLM.from_pretrained(str(student_hf_path()))
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                     task_type="CAUSAL_LM")).save_pretrained(adapter)
    rows = [{"user_id": str(u), "user_idx": u, "split": "valid", "model": "teacher-x", "history_len": 10,
             "prompt_hash": f"{u:016x}", "params": {"max_tokens": 8}, "status": "ok", "steps": ["a", "b", "c"],
             "rationale": f"Step 1: a{u}\nStep 2: b\nStep 3: c"} for u in range(1, 6)]
    rows.append({**rows[0], "user_id": "99", "status": "rejected: missing Step 3"})
    teacher = root / "teacher.jsonl"
    teacher.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import hashlib

    metrics = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "teacher_model": "teacher-x",
               "dataset": "ml-100k", "teacher_file": str(teacher), "steps": 3, "epochs_done": 1.0,
               "config": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                          "lr": 2e-4, "batch_size": 2, "grad_accum": 1, "max_len": 256, "precision": "bf16",
                          "base": "/root/.cache/local-path"},
               "data": {"train_examples": 4, "val_examples": 1, "val_users": ["5"], "target_tokens": 50},
               "val_loss_initial": 3.0, "val_loss_final": 2.0, "val_loss_best": 2.0, "val_loss_best_step": 3,
               "train_loss_last": 2.1, "train_seconds": 9.0, "seconds_per_step": 3.0, "hardware": "CPU",
               "curve": [{"step": 0, "loss": None, "val_loss": 3.0}, {"step": 3, "loss": 2.1, "val_loss": 2.0}],
               "users": [[r["user_id"], hashlib.sha256(r["rationale"].encode()).hexdigest()[:16]] for r in rows[:5]]}
    (adapter / "metrics.json").write_text(json.dumps(metrics))
    return adapter, teacher


def run_publish(tmp_path, adapter, *extra):
    from slim_train.__main__ import main

    main(["publish", "--out", str(tmp_path / "run"), "--adapter", str(adapter), *extra])


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_folder_is_complete_and_valid(tmp_path, adapter_and_teacher, capsys):
    from huggingface_hub import ModelCard

    adapter, _ = adapter_and_teacher
    staging = tmp_path / "stage"
    run_publish(tmp_path, adapter, "--repo-id", "me/slim-test", "--dry-run", "--staging", str(staging))
    files = files_under(staging / "model")
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json",
                          "rationales/teacher.parquet"}
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    card = ModelCard.load(staging / "model" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert card.data.license == "apache-2.0" and "me/slim-test" in card.text
    assert "/root/.cache" not in files["metrics.json"].decode()  # no local paths published

    import pandas as pd

    df = pd.read_parquet(staging / "model" / "rationales" / "teacher.parquet")
    assert list(df["user_id"]) == ["1", "2", "3", "4", "5"] and list(df["is_validation"]) == [False] * 4 + [True]
    assert "dry run" in capsys.readouterr().out


def test_push_uploads_exactly_the_dry_run_folder_and_never_leaks_the_token(tmp_path, adapter_and_teacher,
                                                                         monkeypatch, capsys, caplog):
    adapter, _ = adapter_and_teacher
    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    import huggingface_hub.constants

    # conftest makes the suite offline; this test talks HTTP to 127.0.0.1 only (the FakeHub below)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    dry, real = tmp_path / "dry", tmp_path / "real"
    run_publish(tmp_path, adapter, "--repo-id", "me/slim-test", "--dataset-repo", "me/slim-rationales",
                "--dry-run", "--staging", str(dry))
    with FakeHub() as hub:
        run_publish(tmp_path, adapter, "--repo-id", "me/slim-test", "--dataset-repo", "me/slim-rationales",
                    "--staging", str(real), "--endpoint", hub.url)
    assert hub.unknown == []
    assert hub.repos["model:me/slim-test"]["files"] == files_under(dry / "model")
    assert hub.repos["dataset:me/slim-rationales"]["files"] == files_under(dry / "dataset")
    assert set(hub.repos["dataset:me/slim-rationales"]["files"]) == {"README.md", "data/teacher.parquet"}
    assert "me/slim-rationales" in hub.repos["model:me/slim-test"]["files"]["README.md"].decode()
    # the token travels only as the Authorization header
    auth = [h.get("Authorization") or h.get("authorization") for _, _, h in hub.requests]
    assert auth and all(a == f"Bearer {token}" for a in auth)
    out = capsys.readouterr()
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for text in (out.out, out.err, caplog.text):
        assert token not in text
    assert token.encode() not in written
    assert "pushed model me/slim-test" in out.out


def test_push_without_token_fails_before_any_request(tmp_path, adapter_and_teacher, monkeypatch):
    adapter, _ = adapter_and_teacher
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="HF_TOKEN"):
        run_publish(tmp_path, adapter, "--repo-id", "me/x", "--endpoint", "http://127.0.0.1:9")


def test_shipped_adapter_publishes_with_the_shipped_teacher_file(tmp_path, capsys):
    """The shipped teacher file holds a ``valid`` and a ``test`` row per user; distill trained on the
    ``valid`` ones. Keyed by user alone, the ``test`` row overwrote the ``valid`` one and publish refused."""
    import pandas as pd

    from slim.data.dataset import REPO_ROOT

    adapter = REPO_ROOT / "assets" / "student"
    teacher = REPO_ROOT / "assets" / "rationales" / "ml-100k" / "teacher.jsonl"
    if not (adapter / "metrics.json").exists() or not teacher.exists():
        pytest.skip("the shipped ML-100K adapter or teacher file is not in this checkout")
    staging = tmp_path / "stage"
    run_publish(tmp_path, adapter, "--repo-id", "me/slim-shipped", "--dry-run", "--staging", str(staging),
                "--teacher-file", str(teacher))
    n = len(json.loads((adapter / "metrics.json").read_text())["users"])
    df = pd.read_parquet(staging / "model" / "rationales" / "teacher.parquet")
    assert len(df) == n and set(df["split"]) == {"valid"}
    assert f"({n} rationale rows)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_refused_publish_leaves_no_partial_staging_folder(tmp_path, adapter_and_teacher):
    adapter, teacher = adapter_and_teacher
    bad = tmp_path / "adapter"
    bad.mkdir()
    for f in adapter.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    metrics = json.loads((adapter / "metrics.json").read_text())
    metrics["users"][2][1] = "0" * 16  # a row the teacher file does not have
    (bad / "metrics.json").write_text(json.dumps(metrics))
    staging = tmp_path / "stage"
    with pytest.raises(SystemExit, match="user 3 the adapter was trained on is missing or changed"):
        run_publish(tmp_path, bad, "--repo-id", "me/x", "--dry-run", "--staging", str(staging))
    assert not staging.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written beside it
