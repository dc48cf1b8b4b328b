"""The ``pvit demo`` page: gradio Blocks around a [pvit.predict.Predictor][] (``build_demo``) and ``launch``.

Nothing on the page reaches the internet: analytics are off, there is no share link, and the theme's fonts are
the ones gradio ships (no Google Fonts request).
"""

from __future__ import annotations

import html
import os
import sys
import traceback
from collections.abc import Iterator

import gradio as gr
from gradio_image_annotation import image_annotator
from PIL import Image

from pvit.predict_text import PredictError
from pvit_demo.boxes import answer_summary, draw_boxes, from_annotator, problem, region_hint

# gradio reads this whenever it would send telemetry (custom-component and error reports); the Blocks below also
# pass analytics_enabled=False, which turns off its launch report and version check
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

INTRO = ("Upload an image, draw boxes with the box tool (each becomes `<region1>`, `<region2>`, ... in drawing "
         "order), then ask a question that mentions every box, e.g. *What is in `<region1>`?*")


def answer(predictor, value: dict | None, question: str, **decoding) -> Iterator[tuple[str, str, Image.Image | None]]:
    """The page's answer as it grows: ``(answer text, status markdown, image with boxes or None)`` per step.

    A request the Predictor refuses (a ``<regionN>`` without a box, a box never mentioned, a bad box...) is a
    status message, never an exception.
    """
    image, boxes, colours = from_annotator(value)
    if image is None:
        yield "", "**No image:** upload an image first.", None
        return
    if not (question or "").strip():
        yield "", "**No question:** type a question (mention each box as `<regionN>`).", None
        return
    try:
        stream = predictor.stream(image, question, boxes or None, **decoding)
    except PredictError as e:
        yield "", problem(str(e), e.code, len(boxes)), None
        return
    text = ""
    try:
        for piece in stream:
            text += piece
            yield text, "Generating...", None
    except Exception as e:  # noqa: BLE001 - shown on the page; the demo keeps serving
        traceback.print_exc(file=sys.stderr)
        yield text, f"**Generation failed:** {html.escape(f'{type(e).__name__}: {e}')}", None
        return
    finally:
        stream.close()
    reply = stream.reply
    summary = answer_summary(reply.boxes)
    if reply.finish_reason == "length":
        summary += " The answer stopped at the max_new_tokens limit."
    yield reply.text, summary, draw_boxes(image, boxes, reply.boxes, colours)


def _hint(value: dict | None) -> str:
    drawn = from_annotator(value)
    return region_hint(drawn.image, drawn.boxes)


def build_demo(predictor, **decoding) -> gr.Blocks:
    """The demo page for ``predictor``; ``decoding`` (``max_new_tokens``, ``temperature``...) goes to each answer."""

    def ask(value, question):
        yield from answer(predictor, value, question, **decoding)

    # uploads and answer images are cached by gradio on disk: files older than an hour are deleted hourly
    with gr.Blocks(title=f"pvit demo: {predictor.name}", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## pvit demo: {predictor.name}\n{INTRO}")
        with gr.Row():
            with gr.Column():
                annotator = image_annotator(label="Image and regions", image_type="pil", sources=["upload"],
                                            disable_edit_boxes=True, show_remove_button=True,
                                            show_share_button=False, elem_id="pvit-annotator")
                hint = gr.Markdown(region_hint(None, []), elem_id="pvit-regions")
                question = gr.Textbox(label="Question", placeholder="What is in <region1>?", lines=2,
                                      elem_id="pvit-question")
                button = gr.Button("Ask", variant="primary", elem_id="pvit-ask")
            with gr.Column():
                reply = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="pvit-answer")
                status = gr.Markdown(elem_id="pvit-status")
                result = gr.Image(label="Your regions, and the answer's boxes (magenta)", type="pil",
                                  format="png", interactive=False, buttons=["download", "fullscreen"],
                                  elem_id="pvit-result")
        annotator.change(_hint, annotator, hint, queue=False, show_progress="hidden")
        for event in (button.click, question.submit):
            event(ask, [annotator, question], [reply, status, result], show_progress="minimal")
    return demo


def theme() -> gr.themes.Base:
    """gradio's default look with the fonts it ships (never a Google Fonts stylesheet)."""
    fonts = gr.themes.LocalFont
    return gr.themes.Default(font=[fonts("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=[fonts("IBM Plex Mono"), "ui-monospace", "monospace"])


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860) -> gr.Blocks:
    """Start serving ``demo`` on ``host:port`` in the background (no share link, no run history kept in the
    browser) and return it once it answers; ``demo.close()`` stops it. OSError when the port is taken."""
    demo.queue(default_concurrency_limit=1)  # one generation at a time, the others wait in line
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                quiet=True, show_error=False, theme=theme(), ssr_mode=False, footer_links=[], run_history=False,
                enable_monitoring=False, mcp_server=False, pwa=False, max_file_size="20mb")
    return demo
