"""pvit chat: the session's commands (/image, /box, /reset), kept conversation, streamed answers, and the CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from inference_helpers import image, stage1_export, trained_micro
from pvit.predict import Predictor
from pvit_chat.session import ChatSession


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return stage1_export(trained_micro(tmp_path_factory))


def test_session_commands_and_conversation(export, tmp_path):
    p = Predictor.from_pretrained(export)
    path = tmp_path / "img.png"
    image(64, 48).save(path)
    out: list[str] = []
    s = ChatSession(p, write=out.append, max_new_tokens=4)
    s.loop([f"/image {path}", "/box 4,4,30,30", "What is <region1>?", "And now?", "/box 1,2", "/box 1,1,900,5"])
    assert "image" in out[0] and "64x48" in out[0] and out[1] == "<region1> = [4.0, 4.0, 30.0, 30.0]"
    assert [t["role"] for t in s.turns] == ["user", "assistant", "user", "assistant"]
    whole = p.predict(image(64, 48), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=4)
    assert s.turns[1]["content"] == whole.text and whole.text
    assert sum(o.startswith("error:") for o in out) == 2 and len(s.boxes) == 1
    s.handle("/reset")
    assert s.turns == [] and s.boxes == []
    s.handle("What is <region1>?")
    assert out[-1].startswith("error:") and "<region1>" in out[-1]
    assert s.handle("/quit") is False


def test_cli_chat_reads_lines_and_streams(export, tmp_path):
    from pvit.cli import _load_plugin_commands, app

    if not any(c.name == "chat" for c in app.registered_commands):
        _load_plugin_commands()  # what main() does: the chat plugin adds its command
    path = tmp_path / "img.png"
    image().save(path)
    r = CliRunner().invoke(app, ["chat", str(export), "--image", str(path), "--max-new-tokens", "3"],
                           input="Describe the image.\n/bogus\n/quit\n")
    assert r.exit_code == 0, r.output
    assert "pvit chat with" in r.output and "unknown command /bogus" in r.output
    r = CliRunner().invoke(app, ["chat", str(tmp_path / "missing")], input="")
    assert r.exit_code != 0 and "does not exist" in r.output
