"""ftedit web app: rewrite a fact in a language model, review the history, revert, compare, share.

``python app.py`` loads the default model and serves the page on http://127.0.0.1:7860
(``--model``, ``--host``, ``--port``, ``--share``). On a Hugging Face Space this is the app_file.
Importing this module builds ``demo`` without loading a model; the one shared Workspace is made
on the first request (or at launch). The handlers live in ``ui/handlers.py`` as plain functions.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import gradio as gr

from ftedit.core.hparams import OBJECTIVES, list_presets
from ftedit.deploy.visitors import shared
from ftedit.errors import FteditError
from ui import state, views, visitor
from ui.fields import AUTO
from ui.handlers import (  # noqa: F401  (re-exported: the app's handlers, testable directly)
    checkout,
    compare,
    compare_options,
    details,
    edit,
    export,
    generate,
    history,
    import_file,
    preset_fields,
    publish,
    reapply,
    refresh,
    revert,
    run_edit,
    select_edit,
    verify,
)

# Every event that reads or writes the model waits in this one queue (the Workspace locks too).
MODEL_QUEUE = {"concurrency_limit": 1, "concurrency_id": "model"}
PRIVATE = {"api_visibility": "private"}
EXAMPLES = [
    ["{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"],
    ["The mother tongue of {} is", "Danielle Darrieux", "English", "French"],
    ["{} plays the sport of", "LeBron James", "football", "basketball"],
    ["The capital of {} is", "France", "Lyon", "Paris"],
]
CSS = """
.gradio-container {max-width: 1200px !important}
#summary {min-height: 3em}
"""
INTRO = """# ftedit · rewrite a fact inside a language model
Fine-tune a few MLP weights (ROME's FT / FT-L baseline) so the model states a new fact, then
review, revert, compare and share every edit. Edits are versioned: revert is exact."""


def launch_options() -> dict:
    """What ``launch()`` needs besides host and port (also used by the tests)."""
    return {
        "theme": gr.themes.Soft(primary_hue="indigo"),
        "css": CSS,
        "max_file_size": os.environ.get("FTEDIT_MAX_UPLOAD", "512mb"),
        "footer_links": ["api", "gradio"],
    }


def _visitor_left(request: gr.Request) -> None:
    state.visitor_left(request)


with gr.Blocks(title="ftedit") as demo:
    gr.Markdown(INTRO)
    with gr.Tabs():
        with gr.Tab("Edit", id="edit"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(
                        label="Prompt, with {} where the subject goes",
                        placeholder="{} is located in the city of",
                    )
                    subject = gr.Textbox(label="Subject", placeholder="The Eiffel Tower")
                    with gr.Row():
                        target_new = gr.Textbox(label="New target", placeholder="Rome")
                        target_true = gr.Textbox(
                            label="True target (optional)", placeholder="Paris"
                        )
                    question = gr.Textbox(
                        label="Ask it as a question (optional)",
                        placeholder="Complete the sentence: The Eiffel Tower is located in "
                        "the city of",
                        elem_id="question",
                    )
                    chat_form = gr.Checkbox(
                        label="Also train it as a chat answer (shows when the model is asked; "
                        "about 3x slower)",
                        value=False,
                        elem_id="chat-form",
                    )
                    neighbour_subjects = gr.Textbox(
                        label="Neighbours to check (optional)",
                        placeholder="The Louvre: Paris, Big Ben (blank: the 10 most similar "
                        "subjects the model knows)",
                    )
                    with gr.Accordion("Advanced", open=False):
                        preset = gr.Dropdown(
                            [("auto: the default for this model", AUTO), *list_presets()],
                            value=AUTO,
                            label="Preset",
                        )
                        preset_note = gr.Markdown()
                        layers = gr.Textbox(label="Layers (block numbers)")
                        with gr.Row():
                            lr = gr.Number(label="Learning rate")
                            num_steps = gr.Number(label="Max steps", precision=0)
                            norm = gr.Number(label="Norm constraint (0 = none)")
                        objective = gr.Dropdown(list(OBJECTIVES), label="Objective")
                    run_btn = gr.Button("Rewrite the fact", variant="primary", elem_id="run")
                with gr.Column(scale=1):
                    summary = gr.Markdown(elem_id="summary")
                    before_after = gr.Dataframe(
                        headers=views.BEFORE_AFTER_COLUMNS,
                        label="Before / after",
                        interactive=False,
                        elem_id="before-after",
                    )
                    scores = gr.Dataframe(
                        headers=views.SCORE_COLUMNS,
                        interactive=False,
                        label="Efficacy: the rewrite and paraphrases",
                    )
                    chat_md = gr.Markdown(elem_id="chat-answer")
                    neighbours_md = gr.Markdown(elem_id="neighbours-summary")
                    neighbours_df = gr.Dataframe(
                        headers=views.NEIGHBOUR_COLUMNS,
                        label="Did anything else change? The relation with other subjects",
                        interactive=False,
                        elem_id="neighbours",
                    )
                    loss_plot = gr.LinePlot(x="step", y="loss", label="Training loss", height=240)
            gr.Examples(
                EXAMPLES,
                [prompt, subject, target_new, target_true],
                label="Facts to try (click one)",
            )
            with gr.Accordion("Several facts", open=False):
                facts_df = gr.Dataframe(
                    headers=visitor.FACT_COLUMNS,
                    value=list(EXAMPLES[1:3]),
                    column_count=(4, "fixed"),
                    row_count=(2, "dynamic"),
                    interactive=True,
                    label="One fact per row (prompt with {}, subject, new target, true target)",
                    elem_id="facts",
                )
                with gr.Row(equal_height=True):
                    one_edit = gr.Checkbox(label="One edit holding every fact", value=False)
                    facts_btn = gr.Button("Rewrite these facts", elem_id="run-facts")
                facts_md = gr.Markdown(elem_id="facts-summary")
        with gr.Tab("History", id="history"):
            edits_df = gr.Dataframe(
                headers=views.HISTORY_COLUMNS,
                interactive=False,
                label="Edits, newest first (click a row)",
                elem_id="edits",
            )
            with gr.Row(equal_height=True):
                edit_id = gr.Number(
                    value=None, label="Selected edit", precision=0, elem_id="edit-id"
                )
                revert_btn = gr.Button("Revert", variant="stop", elem_id="revert")
                reapply_btn = gr.Button("Re-apply", elem_id="reapply")
                download_btn = gr.DownloadButton("Download edit file", elem_id="download")
                refresh_btn = gr.Button("Refresh")
            op_message = gr.Markdown(elem_id="op-message")
            with gr.Row():
                edit_details = gr.Markdown()
                with gr.Column():
                    hp_code = gr.Code(language="json", label="Hyperparameters")
                    detail_loss = gr.LinePlot(x="step", y="loss", label="Loss", height=240)
            events_df = gr.Dataframe(
                headers=views.EVENT_COLUMNS,
                interactive=False,
                label="Events: each is a version you can check out",
            )
            with gr.Row(equal_height=True):
                version = gr.Textbox(label="Version", placeholder="v3")
                checkout_btn = gr.Button("Check out this version")
                verify_btn = gr.Button("Verify live weights = replay of the store")
            verify_out = gr.JSON(label="Verify")
            # Shared deployment (FTEDIT_SHARED=1): edits stay private to their visitor until
            # someone holding FTEDIT_ADMIN_TOKEN publishes them.
            with gr.Row(equal_height=True, visible=shared()):
                admin_token = gr.Textbox(
                    label="Admin token", type="password", elem_id="admin-token"
                )
                publish_btn = gr.Button("Publish the selected edit to everyone", elem_id="publish")
        with gr.Tab("Compare", id="compare"):
            with gr.Row(equal_height=True):
                side_a = gr.Dropdown(label="A: edit or version", allow_custom_value=True)
                side_b = gr.Dropdown(label="B: edit or version", allow_custom_value=True)
                compare_btn = gr.Button("Compare", variant="primary")
            compare_md = gr.Markdown()
            norms_plot = gr.BarPlot(
                x="bar",
                y="delta norm",
                color="side",
                x_title="layer, side",
                label="Delta norm per layer",
                height=320,
            )
            behaviour_df = gr.Dataframe(
                label="Each involved prompt's probabilities under A and B", interactive=False
            )
        with gr.Tab("Playground", id="playground"):
            with gr.Row(equal_height=True):
                free_prompt = gr.Textbox(
                    label="Prompt",
                    scale=4,
                    placeholder="The Eiffel Tower is located in the city of",
                )
                max_tokens = gr.Slider(1, 128, value=24, step=1, label="Max new tokens")
            as_chat = gr.Checkbox(
                label="Ask it as a chat question (the model's chat template)", elem_id="as-chat"
            )
            generate_btn = gr.Button("Complete", variant="primary")
            with gr.Row():
                base_out = gr.Textbox(label="Base model", lines=4)
                stack_out = gr.Textbox(label="Current stack of edits", lines=4)
        with gr.Tab("Import", id="import"):
            gr.Markdown(
                "Upload an edit file (a `.safetensors` from History → Download). It is "
                "checked against this model before anything changes."
            )
            upload = gr.File(label="Edit file", file_types=[".safetensors"], type="filepath")
            import_btn = gr.Button("Import", variant="primary")
            import_msg = gr.Markdown()

    tables = [edits_df, events_df]
    sides = [side_a, side_b]
    refreshed = [*tables, *sides]
    demo.load(refresh, None, refreshed, **PRIVATE)
    # A visitor who leaves mid-edit: their training stops at the next step (lock released).
    demo.unload(_visitor_left)
    demo.load(
        preset_fields, preset, [layers, lr, num_steps, norm, objective, preset_note], **PRIVATE
    )
    preset.change(
        preset_fields, preset, [layers, lr, num_steps, norm, objective, preset_note], **PRIVATE
    )
    run_btn.click(
        visitor.edit,
        [prompt, subject, target_new, target_true, preset, layers, lr, num_steps, norm, objective]
        + [neighbour_subjects, question, chat_form],
        [summary, before_after, scores, loss_plot, neighbours_md, neighbours_df, chat_md],
        api_name="edit",
        **MODEL_QUEUE,
    ).success(refresh, None, refreshed, **PRIVATE)
    for box in (prompt, subject):
        box.change(visitor.question_placeholder, [prompt, subject], question, **PRIVATE)
    facts_btn.click(
        visitor.edit_facts,
        [facts_df, one_edit, preset],
        [facts_md, *tables],
        api_name="edit_facts",
        **MODEL_QUEUE,
    ).success(refresh, None, refreshed, **PRIVATE)
    refresh_btn.click(history, None, tables, api_name="history")
    show = [edit_details, hp_code, detail_loss, download_btn]
    edits_df.select(select_edit, edits_df, edit_id, **PRIVATE).success(
        details, edit_id, show, **PRIVATE
    )
    edit_id.submit(details, edit_id, show, api_name="details")
    download_btn.click(export, edit_id, download_btn, api_name="export")
    for btn, fn in ((revert_btn, revert), (reapply_btn, reapply)):
        btn.click(
            fn, edit_id, [op_message, *tables, edit_details], api_name=fn.__name__, **MODEL_QUEUE
        ).success(compare_options, None, sides, **PRIVATE)
    checkout_btn.click(
        checkout, version, [op_message, *tables], api_name="checkout", **MODEL_QUEUE
    ).success(compare_options, None, sides, **PRIVATE)
    verify_btn.click(verify, None, verify_out, api_name="verify", **MODEL_QUEUE)
    compare_btn.click(
        compare,
        [side_a, side_b],
        [compare_md, norms_plot, behaviour_df],
        api_name="compare",
        **MODEL_QUEUE,
    )
    generate_btn.click(
        visitor.generate,
        [free_prompt, max_tokens, as_chat],
        [base_out, stack_out],
        api_name="generate",
        **MODEL_QUEUE,
    )
    publish_btn.click(
        publish, [edit_id, admin_token], [op_message, *tables], api_name="publish", **MODEL_QUEUE
    )
    import_btn.click(
        import_file, upload, [import_msg, *tables], api_name="import", **MODEL_QUEUE
    ).success(compare_options, None, sides, **PRIVATE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the ftedit web app.")
    p.add_argument(
        "--model",
        help="HF id, local folder or .gguf (default: $FTEDIT_MODEL, "
        "else the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="weights dtype (default: $FTEDIT_DTYPE, else float32)",
    )
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else the app stays on localhost.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return p.parse_args(argv)


def _load(t0: float) -> None:
    """Load the model behind the served page (requests wait for it on the Workspace's lock);
    a model that cannot be loaded ends the app with the reason, as before it served."""
    try:
        ws = state.shared_workspace()
    except FteditError as e:
        print(f"ftedit: {e}", file=sys.stderr, flush=True)
        os._exit(2)
    print(
        f"Loaded {ws.fingerprint.name} on {ws.loaded.device} ({len(ws.history())} edits in "
        f"{ws.home}) {time.perf_counter() - t0:.1f} s after start",
        flush=True,
    )
    if getattr(ws, "dtype_notice", None):
        print(f"warning: {ws.dtype_notice}", file=sys.stderr, flush=True)
    try:  # what the first edit reads (~2 s on 2 cores), while the visitor reads the page
        ws.warm()
    except FteditError as e:  # a model the default preset does not fit: edits will say so
        print(f"warning: {e}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    state.configure(args.model, args.dtype)
    try:
        state.check_model()  # a --model that does not resolve: say why at once, serve nothing
    except FteditError as e:
        raise SystemExit(f"ftedit: {e}") from None
    # Importing transformers and reading the weights take ~4 s of a ~10 s start: the page is
    # served meanwhile (bench/app_timings.py), and the first request waits for the model.
    threading.Thread(target=_load, args=(t0,), name="ftedit-load", daemon=True).start()
    _, local_url, share_url = demo.queue().launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        prevent_thread_lock=True,
        quiet=True,
        **launch_options(),
    )
    print(
        f"ftedit is serving at {local_url}"
        + (f" and {share_url}" if share_url else "")
        + f" ({time.perf_counter() - t0:.1f} s after start; the model is loading)",
        flush=True,
    )
    demo.block_thread()


if __name__ == "__main__":
    main()
