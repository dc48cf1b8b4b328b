"""Helpers shared by the engine tests (test_engine*.py): the micro recipe, a one-stage recipe, a stage's parts."""

from __future__ import annotations

from pathlib import Path

import torch

import pvit
from pvit.collate import Collator
from pvit.compose import build_model
from pvit.recipe import options_of
from pvit.templates import get_template

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"


def one_stage_recipe(folder: Path, *, optim: str = "lr: 3.0e-3, max_steps: 6, batch_size: 4",
                     engine: str = "checkpoint_every: 3, tensorboard: false", norm: str = "batch") -> Path:
    """A one-stage recipe (micro's stage 2) written to ``folder``."""
    path = folder / "one_stage.yaml"
    path.write_text(f"""\
base: {MICRO}
model:
  projector: {{options: {{input_norm: {norm}}}}}
  region_projector: {{options: {{input_norm: {norm}}}}}
stages:
  - name: stage2
    data: {{name: synth-regions, options: {{split: train, size: 64, task: all-region, image_size: 32}}}}
    trainable: [projector, region_projector, llm, bbox_embed]
    optim: {{{optim}}}
eval: []
engine: {{{engine}}}
""")
    return path


def stage_setup(loaded, index):
    """The model (seeded), stage config, dataset and training collator of stage ``index`` of a loaded recipe."""
    cfg = loaded.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    st = cfg.stages[index]
    ds = pvit.build("dataset", st.data.name, **options_of(st.data))
    col = Collator.for_model(model, get_template(cfg.model.template, model.llm.tokenizer), cfg.model.max_length,
                             "error", generate=False)
    return model, st, ds, col
