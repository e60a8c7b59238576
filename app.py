"""SLIM-Rec Space: teacher and student reasoning side by side, with recommendations.

A thin Gradio UI over ``slim.demo.service.DemoService``: every decision (parsing uploads, matching titles,
choosing models and checkpoints, ranking) lives in ``slim/``; this file only lays out widgets and
formats what the service returns.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860   (or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    SLIM_ROOT=/path/to/tree python app.py      # serve the assets/ and runs/ of another artefact tree

Live teacher: the local Qwen2.5-Coder-1.5B GGUF when installed (``python -m slim_train models
--teacher``), or an OpenAI-compatible endpoint (``SLIM_TEACHER_BASE_URL``, which takes precedence);
``SLIM_TEACHER_LOCAL=0`` switches the local one off. How it shares the CPU with the student: slim.demo.

The main action is also the API endpoint ``/recommend`` (dataset name, user id or list of titles)
-> (teacher rationale, student rationale, recommendation table as a list of rows).
"""
from __future__ import annotations

import os

# before gradio/torch/llama.cpp are imported: no outside lookups, no spinning threads on a shared CPU
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import html  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from slim.demo.config import PAPER_URL  # noqa: E402
from slim.demo.display import Ranked  # noqa: E402
from slim.demo.reports import find_reports  # noqa: E402
from slim.demo.requests import Request, Update  # noqa: E402
from slim.demo.service import DemoService  # noqa: E402
from slim.demo.uploads.limits import (FUZZY_THRESHOLD, MAX_HISTORY, MAX_QUERY_CHARS, MAX_ROWS,  # noqa: E402
                                     MAX_UPLOAD_BYTES, MIN_HISTORY, UploadError, shown)
from slim.demo.uploads.parsing import TIMESTAMP_RULE  # noqa: E402

log = logging.getLogger("app")
# where assets/ and runs/ are read from: this checkout, or another artefact tree (SLIM_ROOT)
ROOT = Path(os.environ.get("SLIM_ROOT") or Path(__file__).resolve().parent).resolve()
TEMPLATE = ROOT / "assets" / "history_template.csv"
# the "reason" queue: 2 requests in flight on 2 cores (their models share the cores as described in
# slim.demo: one lock per model, split threads), the rest wait in a bounded queue
CONCURRENCY = int(os.environ.get("SLIM_CONCURRENCY", "2"))
QUEUE_SIZE = int(os.environ.get("SLIM_QUEUE_SIZE", "64"))

ABOUT = f"""
### SLIM in five sentences
1. SLIM (Wang et al., WWW 2024) asks a large *teacher* language model (ChatGPT in the paper) to reason about a
   user's history in three steps: the user's preferences, the categories or brands they may want next, and
   specific items.
2. A small *student* (LLaMA2-7B in the paper; SmolLM2-135M here, so it runs on a CPU) is fine-tuned with LoRA to
   write those rationales from a simpler prompt.
3. The student's rationale and every item's text are encoded by one frozen text encoder (BERT in the paper,
   all-MiniLM-L6-v2 here) and fused with an ID-based sequential recommender such as SASRec, GRU4Rec or SR-GNN.
4. Without item IDs, the same vectors support *ID-agnostic* text matching, which can rank the catalogue for a
   history the recommender never saw, such as one you upload here.
5. The paper reports that the distilled student's rationales help the recommender about as much as the
   teacher's (for example NDCG@10 31.43 vs 31.58 for SASRec on Amazon Games) at a fraction of the cost; read it
   at [arXiv:2403.04260]({PAPER_URL}), and see the Results tab for what this reimplementation measured.

### What this Space adds to the paper
- The prompts say what the items are (movies, video games, industrial and scientific products) and, for
  ML-100K, that the catalogue ends in 1998.
- Step 3 names only real catalogue items: each one is chosen under a grammar from the 20 items nearest to
  the history, never an item of the history nor another edition of one. On ML-100K, Step 2 also names
  genres the catalogue has, chosen from the history's most frequent.
- Both fusions are fitted, the paper's concatenation and a zero-initialised gate, and validation picks which
  checkpoint ranks a dataset user.
"""

UPLOAD_HELP = f"""
**File format.** CSV with a header row and a `title` column (one item per row, oldest first); an optional
`timestamp` column (Unix seconds or an ISO date like `2024-01-31`) orders the rows: {TIMESTAMP_RULE}.
Other columns are ignored. JSON: `["Title 1", "Title 2"]`, `{{"titles": [...]}}` or `[{{"title": "..."}}]`;
JSONL: one `{{"title": "..."}}` per line. UTF-8 preferred (UTF-16 and Latin-1 are read with a warning).
{{limits}}
Titles are matched to the catalogue exactly (case and a trailing year ignored), then fuzzily
(score >= {FUZZY_THRESHOLD:.0f}/100); unknown titles are listed as dropped. At least {MIN_HISTORY} matched
items are needed; only the most recent {MAX_HISTORY} are used.
"""
LIMITS_MD = (f"**Limits** (files, pasted text, picks and the API alike): at most {MAX_ROWS:,} titles, "
             f"{MAX_QUERY_CHARS} characters per title (longer rows are dropped), {MAX_UPLOAD_BYTES // 1_000_000} MB "
             "in total; a bigger input is refused before any matching.")
UPLOAD_HELP = UPLOAD_HELP.replace("{limits}", LIMITS_MD)

CSS = """
#teacher, #student {min-height: 12rem; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 0.6rem;}
#status {min-height: 1.5rem;}
"""

service = DemoService(ROOT)


# ---------------------------------------------------------------------------------------
# formatting (presentation only)
# ---------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")


def md_text(text: object) -> str:
    """Any text that may hold user input, made inert for gr.Markdown: HTML escaped (``<img onerror>``,
    ``<script>`` show as typed), Markdown punctuation backslash-escaped (no links, emphasis, headings)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def error_md(message: object) -> str:
    return f"**Error:** {md_text(message)}"


def _styled(df: pd.DataFrame):
    """Highlight the held-out next item's row."""
    if df.empty:
        return df
    return df.style.apply(
        lambda row: ["background-color: #fde68a; font-weight: 600" if row["next_item"] else "" for _ in row], axis=1
    ).format({"score": "{:.3f}"})


def _tables(req: Request, ranked: list[Ranked]) -> tuple[Any, Any]:
    """The primary (SLIM) list and, for dataset users, the plain backbone beside it."""
    df = service.table(req, ranked)
    if not ranked:
        return df, gr.update(visible=False)
    df["score"] = df["score"].round(3)
    cols = ["rank", "title", "score", "next_item"]
    main = df.loc[df["variant"] == ranked[0].variant, cols].reset_index(drop=True)
    if len(ranked) > 1:
        other = df.loc[df["variant"] == ranked[1].variant, cols].reset_index(drop=True)
        return (gr.update(value=_styled(main), visible=True, label=f"Top-10: {ranked[0].variant}"),
                gr.update(value=_styled(other), visible=True, label=f"Compare: {ranked[1].variant}"))
    return gr.update(value=_styled(main), visible=True, label=f"Top-10: {ranked[0].variant}"), gr.update(visible=False)


def _matched(req: Request) -> tuple[Any, Any]:
    if req.history is None:
        return gr.update(visible=False), gr.update(visible=False)
    dropped = req.history.dropped_table()
    return (gr.update(value=req.history.matched_table(), visible=True),
            gr.update(value=dropped, visible=not dropped.empty))


def _status(req: Request) -> str:
    if req.history is None:
        return ""
    h = req.history
    parts = [f"Matched **{len(h.items)}** item(s) from your history"
             + (f"; dropped **{len(h.dropped)}** (see below)." if h.dropped else ".")]
    parts += [f"Note: {md_text(n)}" for n in h.notices]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------
# event handlers
# ---------------------------------------------------------------------------------------
NO_RESULTS = "_The top-10 lists appear here after **Reason and recommend**._"
RANKING_SOON = "_Ranking the catalogue once the student's rationale is complete…_"


def on_go(dataset: str, mode: str, user: str | None, file: str | None, pasted: str, picked: list[str] | None) -> Iterator[tuple]:
    """The button: resolve the history, stream both rationales, then show the rankings.

    Outputs: status, matched, dropped, teacher, student, info, placeholder, top-10 table, compare table.
    The tables stay hidden (a sentence in their place) until there is a ranking to show.
    """
    hidden = gr.update(visible=False)
    waiting = gr.update(value=NO_RESULTS, visible=True)
    try:
        if mode == "user":
            req = service.request_for_user(dataset, user)
        elif mode in ("upload", "paste", "pick"):
            src = {"upload": dict(file_path=file), "paste": dict(pasted=pasted), "pick": dict(picked=picked)}[mode]
            req = service.request_for_history(dataset, service.parse_custom(dataset, **src))
        else:
            raise UploadError("Choose a tab: Dataset user, Upload a file, Paste titles or Pick titles.")
        status = _status(req)
        matched, dropped = _matched(req)
    except UploadError as e:
        yield (error_md(e), hidden, hidden, "", "", "", waiting, hidden, hidden)
        return
    except Exception as e:  # noqa: BLE001 - whatever the input, the page shows a message, the server lives on
        log.warning("input refused: %s", _one_line(e))
        yield (error_md(f"Could not read this input ({type(e).__name__}). Fix: check the file against the "
                        "template, or paste titles one per line."), hidden, hidden, "", "", "", waiting, hidden, hidden)
        return
    try:
        upd: Update | None = None
        for upd in service.run(req):
            if upd.done:
                main, other = _tables(req, upd.ranked)
                yield (status, matched, dropped, upd.teacher.markdown(), upd.student.markdown(), upd.info,
                       hidden, main, other)
            else:
                yield (status, matched, dropped, upd.teacher.markdown(), upd.student.markdown(), upd.info,
                       gr.update(value=RANKING_SOON, visible=True), hidden, hidden)
    except Exception as e:  # noqa: BLE001
        log.warning("request failed: %s", _one_line(e))
        yield (error_md(f"Something failed while reasoning: {type(e).__name__}: {str(e)[:300]}"), matched, dropped,
               "", "", "", waiting, hidden, hidden)


def _one_line(e: BaseException) -> str:
    """An exception as one bounded log line (user text inside is cut and never a traceback)."""
    return shown(f"{type(e).__name__}: {e}", 300)


def recommend(dataset: str, user_or_titles: str | list[str]) -> tuple[str, str, list[dict]]:
    """API: a dataset user id (string) or a list of titles (oldest first) -> (teacher, student, top-10 rows).

    A history may also be ``{"titles": [...]}`` (as in a JSON upload) or the same as JSON text.
    Rows: {rank, variant, title, score, next_item}. Bad input raises an error with a readable message.
    """
    try:
        req = service.resolve(dataset, user_or_titles)
    except UploadError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # noqa: BLE001 - a message for the caller, one line in the log, no traceback
        log.warning("API input refused: %s", _one_line(e))
        raise gr.Error(f"Could not read this input ({type(e).__name__}). Fix: send a user id such as \"196\" "
                       "or a list of titles, oldest first.", print_exception=False) from None
    last = None
    for last in service.run(req):
        pass
    table = service.table(req, last.ranked)
    return last.teacher.markdown(), last.student.markdown(), table.to_dict(orient="records")


def _report_md(r) -> str:
    # relative image links in report.md cannot resolve in the page: the gallery below shows the plots
    body = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"_(plot \1: see the gallery below)_", r.markdown)
    return f"## {r.dataset}\n_source: `{r.source.relative_to(ROOT)}`_\n\n{body}"


def on_reports(choice: str | None = None):
    """Results tab: the report picker (every report.md that ships or a run wrote), one report, its plots."""
    reports = find_reports(ROOT)
    if not reports:
        return (gr.update(choices=[], value=None),
                "No evaluation report yet. `python -m slim_eval --split test` writes `runs/<dataset>/report.md` "
                "and plots; this tab shows them as written (nothing is recomputed here).", [])
    names = [r.dataset for r in reports]
    r = reports[names.index(choice)] if choice in names else reports[0]
    gallery = [(str(p), f"{r.dataset}: {p.stem}") for p in r.plots]
    return gr.update(choices=names, value=r.dataset), _report_md(r), gallery


def on_dataset(dataset: str):
    try:
        users = service.user_ids(dataset)
    except UploadError as e:
        return gr.update(), gr.update(), error_md(e)
    return (gr.update(choices=users, value=users[0]),
            gr.update(choices=service.catalogue(dataset).choices(), value=[]),
            service.models_markdown(dataset))


# ---------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------
def build() -> gr.Blocks:
    datasets = service.available_datasets()
    first = datasets[0]
    users = service.user_ids(first)
    with gr.Blocks(title="SLIM: small language models as recommendation reasoners") as demo:
        gr.Markdown("# SLIM: can small language models be good reasoners for sequential recommendation?\n"
                    "A teacher LLM and a distilled student each reason about a history in three steps; "
                    "the student's rationale then ranks the catalogue.")
        mode = gr.State("user")
        with gr.Tabs():
            with gr.Tab("Recommend"):
                dataset = gr.Dropdown(datasets, value=first, label="Dataset", elem_id="dataset", allow_custom_value=True)
                models = gr.Markdown(service.models_markdown(first), elem_id="models")
                with gr.Tabs():
                    with gr.Tab("Dataset user", elem_id="tab-user") as t_user:
                        with gr.Row():
                            # custom values are checked by the service (a short message), not by
                            # Gradio (whose message lists every choice)
                            user = gr.Dropdown(users, value=users[0], filterable=True, scale=4, allow_custom_value=True,
                                               label="User id (type to search)", elem_id="user")
                            rnd = gr.Button("Random user", scale=1, elem_id="random")
                    with gr.Tab("Upload a file", elem_id="tab-upload") as t_upload:
                        gr.Markdown(UPLOAD_HELP)
                        with gr.Row():
                            file = gr.File(label="History (.csv, .json, .jsonl)", type="filepath", scale=3,
                                           file_types=[".csv", ".json", ".jsonl", ".txt", ".tsv"], elem_id="upload")
                            gr.DownloadButton("Download template CSV", value=str(TEMPLATE), scale=1, elem_id="template")
                    with gr.Tab("Paste titles", elem_id="tab-paste") as t_paste:
                        pasted = gr.Textbox(lines=8, label="Titles, one per line, oldest first",
                                            placeholder="Toy Story\nGoldenEye\nFargo", elem_id="pasted")
                        gr.Markdown(LIMITS_MD, elem_id="paste-limits")
                    with gr.Tab("Pick titles", elem_id="tab-pick") as t_pick:
                        picked = gr.Dropdown(service.catalogue(first).choices(), value=[], multiselect=True,
                                             filterable=True, allow_custom_value=True, label="Catalogue titles (type to search; pick oldest first)",
                                             elem_id="picked")
                for tab, name in ((t_user, "user"), (t_upload, "upload"), (t_paste, "paste"), (t_pick, "pick")):
                    tab.select(lambda n=name: n, None, mode, queue=False, api_visibility="private")
                go = gr.Button("Reason and recommend", variant="primary", elem_id="go")
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    matched = gr.Dataframe(label="Matched items (your history, oldest first)", visible=False,
                                           interactive=False, elem_id="matched", max_height=300)
                    dropped = gr.Dataframe(label="Dropped rows", visible=False, interactive=False,
                                           elem_id="dropped", max_height=300)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Teacher")
                        teacher_md = gr.Markdown(elem_id="teacher")
                    with gr.Column():
                        gr.Markdown("### Student (SLIM)")
                        student_md = gr.Markdown(elem_id="student")
                info = gr.Markdown(elem_id="rec-info")
                placeholder = gr.Markdown(NO_RESULTS, elem_id="rec-placeholder")
                with gr.Row():
                    # hidden until there is a ranking: an empty Dataframe would show a "1 2 3" placeholder grid
                    rec_main = gr.Dataframe(label="Top-10 recommendations", interactive=False, elem_id="rec-main",
                                            visible=False, wrap=True, column_widths=["10%", "55%", "15%", "20%"])
                    rec_other = gr.Dataframe(label="Compare", interactive=False, visible=False,
                                             elem_id="rec-compare", wrap=True,
                                             column_widths=["10%", "55%", "15%", "20%"])
            with gr.Tab("Results"):
                with gr.Row():
                    report_pick = gr.Dropdown([], label="Report", elem_id="report-pick", scale=4)
                    refresh = gr.Button("Reload report files", size="sm", scale=1)
                report_md = gr.Markdown(elem_id="report")
                plots = gr.Gallery(label="Plots", columns=2, height=480, object_fit="contain", elem_id="plots")
            with gr.Tab("About"):
                gr.Markdown(ABOUT, elem_id="about")
                gr.Markdown("### Datasets and what ships for them\n" + service.datasets_markdown(), elem_id="datasets")

        rnd.click(lambda d: service.random_user(d), dataset, user, queue=False, api_visibility="private")
        dataset.change(on_dataset, dataset, [user, picked, models], api_visibility="private")
        go.click(on_go, [dataset, mode, user, file, pasted, picked],
                 [status, matched, dropped, teacher_md, student_md, info, placeholder, rec_main, rec_other],
                 api_visibility="private", concurrency_limit=CONCURRENCY, concurrency_id="reason")
        report_outputs = [report_pick, report_md, plots]
        refresh.click(on_reports, report_pick, report_outputs, api_visibility="private")
        report_pick.input(on_reports, report_pick, report_outputs, api_visibility="private")
        demo.load(on_reports, None, report_outputs, api_visibility="private")
        gr.api(recommend, api_name="recommend", concurrency_limit=CONCURRENCY, concurrency_id="reason")
    return demo


def _patient_localhost_check() -> None:
    """Give gradio's start-up self-check more time.

    ``launch()`` HEADs its own URL with a 3 s timeout and, on one timeout, aborts with "localhost is
    not accessible". On a CPU shared with training jobs (load average 10+ on 2 cores, measured) the
    first request to render the page can take longer than that, so the app died at start-up in tests.
    Same check, patient: up to ~60 s of retries.
    """
    from gradio import networking

    original = getattr(networking, "url_ok", None)
    if original is None:
        return

    def url_ok(url: str) -> bool:
        import time

        import httpx

        for _ in range(12):
            try:
                r = httpx.head(url, timeout=5, verify=False)
                if r.status_code in (200, 401, 301, 302, 303, 307, 308):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return original(url)

    networking.url_ok = url_ok


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--no-warm-up", action="store_true", help="load models on the first request instead")
    args = p.parse_args(argv)
    # slim.demo logs one line per refused checkpoint / unavailable teacher: show them in the server log
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.no_warm_up:
        service.warm_up()
    demo = build()
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    _patient_localhost_check()
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size="5mb",
                allowed_paths=[str(ROOT / "runs"), str(ROOT / "assets")], css=CSS, footer_links=["api"],
                ssr_mode=False)  # default theme: its fonts are bundled, nothing is fetched from a CDN


if __name__ == "__main__":
    main()
