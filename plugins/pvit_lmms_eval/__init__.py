"""pvit built-in plugin: ``lmms-eval --model pvit``, lmms-eval's requests answered by [pvit.Predictor][].

lmms-eval finds models through the ``lmms_eval.models`` entry-point group: pvit's ``pyproject.toml`` declares
``pvit = "pvit_lmms_eval:manifest"`` there. Nothing here imports lmms-eval until lmms-eval asks for the model,
so pvit works without it (it is the optional extra ``pvit[lmms-eval]``).
"""

from __future__ import annotations

MODEL_ID = "pvit"


def manifest():
    """lmms-eval's registration record of the ``pvit`` model (read by its entry-point loader)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="pvit_lmms_eval.model.PVIT")
