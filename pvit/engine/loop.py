"""The iteration loop of a stage: mmengine's IterBasedTrainLoop that resumes at the saved data position and
sets train mode once (workarounds 6 and 10)."""

from __future__ import annotations

from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator


class PvitTrainLoop(IterBasedTrainLoop):
    """Starts a resumed stream at its saved position instead of loading and discarding every batch already
    trained on (mmengine replays the loader), and calls ``model.train()`` once per stage, not every step."""

    def run(self):
        runner = self.runner
        stream = self.dataloader.sampler
        per_step = self.dataloader.batch_size * stream.world
        consumed = int(runner.message_hub.get_info("pvit_samples", self._iter * per_step))
        if self._iter > 0:
            stream.start = consumed
            self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        runner.call_hook("before_train")
        runner.call_hook("before_train_epoch")
        # once, not every step as mmengine does (a walk over every submodule, ~2 ms per step for a
        # small model); nothing switches to eval mode in between: stages run no validation loop
        runner.model.train()
        while self._iter < self._max_iters and not self.stop_training:
            batch = next(self.dataloader_iterator)
            consumed += per_step
            runner.message_hub.update_info("pvit_samples", consumed)  # saved with each checkpoint
            self.run_iter(batch)
        runner.call_hook("after_train_epoch")
        runner.call_hook("after_train")
        return runner.model
