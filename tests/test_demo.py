"""pvit demo: the box logic without a browser, the answer stream, the command, and the page in headless chromium.

The browser tests drive Debian's chromium through its chromedriver (installed by tests/browser/install_chromium.sh):
upload an image, draw a box with real mouse drag events on the annotator's canvas, ask, wait for the answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from inference_helpers import stage1_export, trained_micro
from pvit_demo.boxes import ANSWER_COLOUR, REGION_COLOUR, draw_boxes, from_annotator, problem, region_hint

HERE = Path(__file__).parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 60  # upper bound of every explicit wait (the page answers in seconds; the machine may be busy)


def _value(boxes, image=None, orientation=0):
    return {"image": image or Image.new("RGB", (100, 50), "white"), "boxes": boxes, "orientation": orientation}


def _box(x1, y1, x2, y2, color=(255, 168, 77)):
    return {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "label": "", "color": color}


# ------------------------------------------------------------------------------ box logic (no gradio, no browser)
def test_annotator_boxes_come_in_drawing_order_clipped_with_their_colours():
    # the annotator lists the newest box first: [third, second, first]
    drawn = from_annotator(_value([_box(5, 5, 9, 9, (1, 2, 3)), _box(90, 40, 120, 70), _box(30, 20, 10, 2)]))
    assert drawn.image.size == (100, 50)
    assert drawn.boxes == [[10, 2, 30, 20], [90, 40, 100, 50], [5, 5, 9, 9]]  # swapped corners fixed, clipped
    assert drawn.colours == [(255, 168, 77), (255, 168, 77), (1, 2, 3)]
    assert from_annotator(_value([_box(1, 1, 5, 5, (0, 0, 0))])).colours == [REGION_COLOUR]  # colour not set
    assert from_annotator(None) == (None, [], []) and from_annotator({"image": None, "boxes": []}).image is None


def test_a_turned_image_is_turned_like_the_annotator_shows_it():
    im = Image.new("RGB", (100, 50), "white")
    im.putpixel((0, 0), (255, 0, 0))  # top-left corner
    for turns, size, corner in [(1, (50, 100), (49, 0)), (2, (100, 50), (99, 49)), (3, (50, 100), (0, 99))]:
        drawn = from_annotator(_value([_box(0, 0, 40, 90)], im, turns))
        assert drawn.image.size == size
        assert drawn.image.getpixel(corner) == (255, 0, 0), turns  # clockwise quarter turns
        assert drawn.boxes == [[0, 0, min(40, size[0]), min(90, size[1])]]


def test_region_hint_counts_boxes_and_says_how_to_refer_to_them():
    assert "<region1>" in region_hint(None, []) and "Upload" in region_hint(None, [])
    assert "No boxes" in region_hint(Image.new("RGB", (4, 4)), [])
    hint = region_hint(Image.new("RGB", (4, 4)), [[0, 0, 2, 2], [1, 1, 3.5, 4]])
    assert "2 region(s)" in hint and "`<region2>` = (1, 1, 3.5, 4)" in hint


def test_problem_text_names_the_mismatch_and_shows_region_tags_escaped():
    text = problem("prompt: <region2> has no box (1 box(es) given: <region1>..<region1>)", "region_without_box", 1)
    assert text.startswith("**Region mismatch:** &lt;region2&gt; has no box") and "<region" not in text
    assert "refer to them as &lt;region1&gt;" in text
    assert problem("box [0, 0, 9, 9] is outside the image", "invalid_box", 0).startswith("**Cannot answer:**")


def test_draw_boxes_outlines_regions_and_answer_boxes_on_a_copy():
    image = Image.new("RGB", (200, 150), (255, 255, 255))
    out = draw_boxes(image, [[20, 40, 80, 100]], [[120, 30, 190, 140]], colours=[(0, 128, 0)])
    assert image.getpixel((20, 40)) == (255, 255, 255)  # the input is untouched
    assert out.getpixel((20, 70)) == (0, 128, 0) and out.getpixel((50, 100)) == (0, 128, 0)  # region edges
    assert out.getpixel((120, 90)) == ANSWER_COLOUR and out.getpixel((190, 90)) == ANSWER_COLOUR  # answer edges
    assert out.getpixel((50, 70)) == (255, 255, 255) and out.getpixel((155, 90)) == (255, 255, 255)  # insides
    # the labels: a tag in the box's colour above each box, where nothing else is drawn
    assert (0, 128, 0) in {out.getpixel((x, y)) for x in range(20, 81) for y in range(38)}
    assert ANSWER_COLOUR in {out.getpixel((x, y)) for x in range(120, 191) for y in range(29)}
    assert draw_boxes(image, [], []).tobytes() == image.tobytes()


# ------------------------------------------------------------------------------ the answer stream (no browser)
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from pvit.predict import Predictor

    return Predictor.from_pretrained(stage1_export(trained_micro(tmp_path_factory)))


def test_answer_streams_text_then_shows_the_boxes_and_turns_mismatches_into_messages(predictor):
    pytest.importorskip("gradio", reason="the demo's extra is not installed: pip install 'pvit[demo]'")
    from pvit_demo.app import answer

    value = _value([_box(10, 5, 60, 40)], Image.new("RGB", (96, 64), "red"))
    steps = list(answer(predictor, value, "What is in <region1>?", max_new_tokens=6))
    texts = [s[0] for s in steps[:-1]]
    assert len(texts) >= 2 and all(b.startswith(a) and len(b) > len(a) for a, b in pairwise(texts))
    final_text, status, picture = steps[-1]
    assert final_text.strip() and final_text.startswith(texts[-1].strip())
    assert "the answer" in status.lower() and picture.size == (96, 64)
    assert picture.getpixel((10, 20)) != (255, 0, 0)  # <region1>'s outline is drawn

    for question, expected in [("What is in <region2>?", "&lt;region2&gt; has no box"),
                               ("What is this?", "&lt;region1&gt; is not in the text")]:
        (text, status, picture), = answer(predictor, value, question)
        assert (text, picture) == ("", None) and status.startswith("**Region mismatch:**") and expected in status
    (_, status, _), = answer(predictor, None, "What is in <region1>?")
    assert "upload an image" in status
    (_, status, _), = answer(predictor, value, "   ")
    assert "No question" in status


# ------------------------------------------------------------------------------ the command
def _pvit(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_help_imports_neither_gradio_nor_torch():
    out = _pvit("import sys\nfrom pvit.cli import main\nsys.argv = ['pvit', '--help']\ntry:\n    main()\n"
                "except SystemExit:\n    pass\n"
                "print('HEAVY', [m for m in ('gradio', 'gradio_image_annotation', 'torch') if m in sys.modules])")
    assert out.returncode == 0, out.stderr
    assert " demo " in out.stdout and "HEAVY []" in out.stdout, out.stdout[-500:]


def test_demo_without_gradio_says_what_to_install(tmp_path):
    out = _pvit(f"import sys\nsys.modules['gradio'] = None  # as if not installed\nfrom pvit.cli import main\n"
                f"sys.argv = ['pvit', 'demo', {str(tmp_path)!r}]\nmain()")
    assert out.returncode == 2 and "pip install 'pvit[demo]'" in out.stderr and "Traceback" not in out.stderr


def test_demo_of_a_missing_run_is_a_user_error(tmp_path):
    pytest.importorskip("gradio", reason="the demo's extra is not installed: pip install 'pvit[demo]'")
    out = _pvit(f"import sys\nfrom pvit.cli import main\nsys.argv = ['pvit', 'demo', {str(tmp_path / 'nope')!r}]\n"
                "main()")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------ the page in a real browser
@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium and chromedriver, installed on first use; a skip (with the reason) where they cannot be."""
    out = subprocess.run(["sh", str(HERE / "browser" / "install_chromium.sh")], capture_output=True, text=True,
                         timeout=900, check=False)
    if out.returncode != 0 or not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"headless chromium cannot be installed here: {out.stderr.strip()[-400:] or 'no apt-get'}; "
                    "install Debian's chromium and chromium-driver (tests/browser/install_chromium.sh as root)")
    return CHROMIUM


@pytest.fixture(scope="module")
def served(predictor):
    """The demo page served on a free loopback port in this process: ``(url, gradio Blocks)``."""
    pytest.importorskip("gradio", reason="the demo's extra is not installed: pip install 'pvit[demo]'")
    from pvit_demo.app import build_demo, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = launch(build_demo(predictor, max_new_tokens=8), "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/", page
    page.close()


def test_the_server_side_never_phones_home(served):
    url, page = served
    assert url.startswith("http://127.0.0.1:") and page.server_name == "127.0.0.1"
    assert page.share is False and page.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert page.stylesheets == [], page.stylesheets  # fonts come as @font-face from gradio's own static files


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)  # never selenium-manager
    yield driver
    driver.quit()


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _open_and_draw(driver, url: str, picture: Path, box: tuple[int, int, int, int]):
    """Load the page, upload ``picture`` (320x240), drag a box over ``box`` (image pixels) on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S)
    driver.get(url)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#pvit-annotator input[type=file]")))
    upload.send_keys(str(picture))
    canvas = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#pvit-annotator canvas")))
    wait.until(lambda d: "No boxes" in _text(d, "#pvit-regions"))  # the image reached the server
    # the annotator shows the image centred, scaled down only when wider than the canvas; offsets are from the
    # canvas centre
    scale = min(1.0, canvas.size["width"] / 320)
    x1, y1, x2, y2 = ((v - c) * scale for v, c in zip(box, (160, 120, 160, 120)))
    ActionChains(driver).move_to_element_with_offset(canvas, round(x1), round(y1)).click_and_hold() \
        .move_by_offset(round((x2 - x1) / 2), round((y2 - y1) / 2)) \
        .move_by_offset(round((x2 - x1) / 2), round((y2 - y1) / 2)).release().perform()
    wait.until(lambda d: "1 region(s)" in _text(d, "#pvit-regions"))
    return wait


def _ask(driver, question: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, "#pvit-question textarea")
    field.clear()
    field.send_keys(question)
    driver.find_element(By.CSS_SELECTOR, "#pvit-ask").click()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    image = Image.new("RGB", (320, 240), (200, 220, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 60, 140, 180], fill=(220, 40, 40))
    draw.ellipse([190, 80, 290, 190], fill=(40, 160, 60))
    path = tmp_path_factory.mktemp("demo-image") / "shapes.png"
    image.save(path)
    return path


def test_browser_draws_a_box_asks_about_it_and_sees_the_answer(browser, served, picture, tmp_path):
    import re

    from selenium.webdriver.common.by import By

    demo_url = served[0]
    wait = _open_and_draw(browser, demo_url, picture, (40, 60, 140, 180))
    drawn = re.search(r"<region1>\s*= \(([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\)", _text(browser, "#pvit-regions"))
    assert drawn and all(abs(float(v) - e) <= 3 for v, e in zip(drawn.groups(), (40, 60, 140, 180))), drawn

    _ask(browser, "What is in <region1>?")
    answer = "#pvit-answer textarea"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, answer).get_attribute("value").strip())
    wait.until(lambda d: "the answer" in _text(d, "#pvit-status").lower())  # the stream is over
    assert browser.find_element(By.CSS_SELECTOR, answer).get_attribute("value").strip()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pvit-result img"))  # the image with the boxes
    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # nothing but the demo's own server was contacted (no analytics, fonts or CDN)
    params = [json.loads(e["message"])["message"].get("params", {}) for e in browser.get_log("performance")]
    urls = [str(p.get("request", {}).get("url") or p.get("url") or "") for p in params]
    remote = {u for u in urls if re.match(r"(https?|wss?)://", u) and not u.startswith(demo_url.rstrip("/"))
              and not re.match(r"(https?|wss?)://127\.0\.0\.1:", u)}
    assert len([u for u in urls if u.startswith(demo_url)]) > 3 and not remote, sorted(remote)


def test_browser_shows_region_mismatches_as_messages(browser, served, picture):
    from selenium.webdriver.common.by import By

    wait = _open_and_draw(browser, served[0], picture, (190, 80, 290, 190))
    for question, expected in [("What is in <region2>?", "<region2> has no box"),
                               ("What is in the picture?", "<region1> is not in the text")]:
        _ask(browser, question)
        wait.until(lambda d, expected=expected: expected in _text(d, "#pvit-status"))
        status = _text(browser, "#pvit-status")
        assert status.startswith("Region mismatch:") and "refer to them as <region1>" in status, status
        assert browser.find_element(By.CSS_SELECTOR, "#pvit-answer textarea").get_attribute("value") == ""
