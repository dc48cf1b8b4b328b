"""A stage's progress on rank 0 (a rich bar on a terminal, else a line every few steps), its loss record, and
its step rate (for FLOP/s and MFU)."""

from __future__ import annotations

import sys
import time

from mmengine.hooks import Hook


class Display:
    """Rank 0's progress: a rich progress bar on a terminal, else a line every ``every`` steps."""

    def __init__(self, name: str, total: int, start: int, enabled: bool, every: int):
        self.name, self.total, self.every = name, total, max(1, every)
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"  {name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, completed=start, info="")

    def update(self, it: int, loss: float, lr: float, it_s: float, samples_s: float) -> None:
        info = f"loss {loss:.4f} lr {lr:.2e} {it_s:.2f} it/s {samples_s:.1f} samples/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=it, info=info)
        elif self.enabled and (it % self.every == 0 or it == self.total):
            print(f"  {self.name} [{it:>5}/{self.total}] {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class ProgressHook(Hook):
    """Appends each step's ``(step, loss)`` (the global mean) to ``losses`` and shows loss, lr and throughput."""

    priority = "VERY_LOW"

    def __init__(self, stage_name: str, total: int, log_every: int, progress: bool, losses: list,
                 samples_per_step: int, flops: dict | None = None):
        self.stage_name, self.total, self.log_every, self.progress = stage_name, total, log_every, progress
        self.losses, self.samples_per_step = losses, samples_per_step
        self.display: Display | None = None
        self.flops = flops  # filled in: steps_per_s

    def before_train(self, runner):
        self.t0, self.start = time.time(), runner.iter
        self.display = Display(self.stage_name, self.total, runner.iter, self.progress and runner.rank == 0,
                               self.log_every)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        it = runner.iter + 1
        value = outputs.get("ce", outputs.get("loss")) if outputs else None
        loss = float(value) if value is not None else float("nan")
        self.losses.append((it, loss))
        if self.display is not None and self.display.enabled:
            lr = runner.optim_wrapper.get_lr()["lr"][0]
            dt = max(time.time() - self.t0, 1e-9)
            rate = (it - self.start) / dt
            self.display.update(it, loss, lr, rate, rate * self.samples_per_step)

    def after_train(self, runner):
        if self.flops is not None and runner.iter > self.start:
            self.flops["steps_per_s"] = (runner.iter - self.start) / max(time.time() - self.t0, 1e-9)
        if self.display is not None:
            self.display.close()
