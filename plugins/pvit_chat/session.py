"""A terminal chat session: the conversation, the image, boxes added with ``/box``, and the slash commands."""

from __future__ import annotations

from typing import Callable, Iterable

from pvit.predict_text import PredictError

HELP = ("commands: /image PATH (new image, new conversation), /box x1,y1,x2,y2 (pixels; adds the next <regionN>), "
        "/reset, /help, /quit")


class ChatSession:
    """Keeps the turns and boxes of one conversation; ``handle(line)`` runs a command or answers a message."""

    def __init__(self, predictor, image=None, *, write: Callable[[str], None] = print, **decoding):
        self.p, self.image, self.write, self.decoding = predictor, image, write, decoding
        self.turns: list[dict] = []
        self.boxes: list[list[float]] = []

    def reset(self) -> None:
        self.turns, self.boxes = [], []

    def handle(self, line: str) -> bool:
        """Process one input line; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        if line in ("/quit", "/exit"):
            return False
        if line == "/help":
            self.write(HELP)
        elif line == "/reset":
            self.reset()
            self.write("conversation cleared")
        elif line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                self.p.sample(path, "x")  # reads and checks the image
                from pvit.images import load_image

                self.image = load_image(path, sample_id="chat")
                self.reset()
                self.write(f"image {path} ({self.image.size[0]}x{self.image.size[1]}); conversation cleared")
            except (PredictError, Exception) as e:  # noqa: BLE001 - shown, the chat goes on
                self.write(f"error: {e}")
        elif line.startswith("/box"):
            try:
                box = [float(v) for v in line[len("/box"):].replace(" ", "").split(",")]
                from pvit.predict_text import normalise_box

                normalise_box(box, "pixels", self.image.size if self.image else (0, 0), "/box")
                self.boxes.append(box)
                self.write(f"<region{len(self.boxes)}> = {box}")
            except (ValueError, PredictError) as e:
                self.write(f"error: {e}; usage: /box x1,y1,x2,y2 in pixels of the image")
        elif line.startswith("/"):
            self.write(f"unknown command {line.split()[0]}; {HELP}")
        else:
            self.ask(line)
        return True

    def ask(self, text: str) -> None:
        turns = self.turns + [{"role": "user", "content": text}]
        try:
            stream = self.p.stream(self.image, turns, self.boxes or None, **self.decoding)
            pieces = []
            for piece in stream:
                pieces.append(piece)
                self.write_piece(piece)
            self.write("")
        except PredictError as e:
            self.write(f"error: {e}")
            return
        reply = stream.reply
        if reply.boxes:
            self.write("boxes (pixels): " + "; ".join(", ".join(f"{v:g}" for v in b) for b in reply.boxes))
        self.turns = turns + [{"role": "assistant", "content": reply.text}]

    def write_piece(self, piece: str) -> None:
        self.write(piece) if self.write is not print else print(piece, end="", flush=True)

    def loop(self, lines: Iterable[str]) -> None:
        for line in lines:
            if not self.handle(line):
                break
