"""The frozen-feature cache: the same losses as without it, never a stale entry, disk reuse, box jitter."""

from __future__ import annotations

import torch
from torch import nn

import pvit
from pvit.feature_cache import FeatureCache, fingerprint
from pvit.run import run_recipe
from helpers import MICRO


class Calls(nn.Module):
    """A per-row function that counts the rows it computes."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.lin(x), x.sum(1)


def test_rows_are_computed_once_and_come_back_equal():
    torch.manual_seed(0)
    f, cache, x = Calls(), FeatureCache(), torch.randn(5, 6)
    ns = fingerprint(f)
    first = cache.rows(ns, f, x)
    again = cache.rows(ns, f, torch.cat([x[3:], torch.randn(2, 6)]))  # rows 3, 4 seen, 2 new
    assert f.rows == 5 + 2 and cache.hits == 2 and cache.misses == 7
    direct = f(x)
    assert torch.equal(first[0], direct[0]) and torch.equal(first[1], direct[1])
    assert torch.equal(again[0][:2], direct[0][3:])
    part = cache.rows(ns, f, x, keep=[1])  # only row 1 needed: the others are zeros
    assert torch.equal(part[0][1], direct[0][1]) and not part[0][0].any()
    y, before = torch.randn(1, 6), f.rows
    twice = cache.rows(ns, f, torch.cat([y, y]))  # the same new row twice in one batch: computed once
    assert f.rows == before + 1 and torch.equal(twice[0][0], twice[0][1])


def test_other_weights_never_use_the_entries_in_memory_or_on_disk(tmp_path):
    torch.manual_seed(0)
    f, x = Calls(), torch.randn(4, 6)
    a = FeatureCache(dir=tmp_path)
    a.rows(fingerprint(f), f, x)
    with torch.no_grad():
        f.lin.weight.add_(0.5)  # new weights: a new fingerprint
    before = f.rows
    out = a.rows(fingerprint(f), f, x)  # the same run: its memory holds only the old weights' rows
    assert f.rows - before == 4 and a.hits == 0 and torch.equal(out[0], f(x)[0])
    with torch.no_grad():
        f.lin.weight.add_(0.5)
    fresh = FeatureCache(dir=tmp_path)  # a later run: the disk holds two other weights' rows
    before = f.rows
    out = fresh.rows(fingerprint(f), f, x)
    assert f.rows - before == 4 and fresh.disk_hits == 0 and torch.equal(out[0], f(x)[0])
    later = FeatureCache(dir=tmp_path)  # a run after that, with the same weights, reads them from disk
    before = f.rows
    out = later.rows(fingerprint(f), f, x)
    assert f.rows == before and later.disk_hits == 4 and torch.equal(out[0], f(x)[0])


def test_autocast_and_input_changes_are_other_keys():
    f, cache, x = Calls(), FeatureCache(), torch.randn(3, 6)
    ns = fingerprint(f)
    cache.rows(ns, f, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache.rows(ns, f, x)
    cache.rows(ns, f, x + 1e-6)  # a different preprocessing of the same image
    assert cache.hits == 0 and f.rows == 9


def test_memory_bound_evicts_least_recently_used():
    f = Calls()
    cache = FeatureCache(max_memory_mb=(3 * 4 + 4) * 3 / 2**20)  # room for 3 rows of (3 + 1) float32
    ns = fingerprint(f)
    x = torch.randn(5, 6)
    cache.rows(ns, f, x)
    assert cache.stats()["entries"] == 3 and cache.stats()["memory_mb"] <= 3 * 16 / 2**20 + 1e-9


def _micro(run, cache: bool, extra=()):
    over = [f"run_dir={run}", f"engine.feature_cache.enabled={cache}", "eval=[]", *extra]
    for i in range(3):  # a pool of 8 scenes: every image comes back, across epochs and stages
        over += [f"stages.{i}.data.options.scenes=8", f"stages.{i}.data.options.words_per_image=1"]
    return run_recipe(pvit.load_recipe(MICRO, over), overwrite=True, log=lambda s: None)


def test_training_with_the_cache_gives_the_same_losses_and_skips_trained_encoders(tmp_path):
    # bf16 autocast as in the tiny recipe; the region encoder trains in stage 2 of 3, so it is cached in 1 and 3
    extra = [f"stages.{i}.optim.precision=bf16" for i in range(3)]
    extra += ["stages.1.trainable=[region_projector, region_encoder]", "model.region_encoder.options.frozen=false"]
    on, off = _micro(tmp_path / "on", True, extra), _micro(tmp_path / "off", False, extra)
    for a, b in zip(on["stages"], off["stages"]):
        la, lb = [v for _, v in a["losses"]], [v for _, v in b["losses"]]
        # stated tolerance: 1e-5 absolute (a cached row may have been computed in a different batch)
        assert len(la) == len(lb) == 6 and max(abs(x - y) for x, y in zip(la, lb)) <= 1e-5, (a["name"], la, lb)
        assert b["feature_cache"] is None
    caches = [st["feature_cache"] for st in on["stages"]]
    assert [c["components"] for c in caches] == [["image_encoder", "region_encoder"], ["image_encoder"],
                                                 ["image_encoder", "region_encoder"]]
    assert all(c["hits"] > 0 for c in caches)
    assert caches[2]["misses"] == 8  # the 8 pool images once through the region encoder's new weights; no more


def test_regionclip_pools_boxes_from_given_features():
    """Box jitter keeps working: the cached part is box-independent; boxes are pooled from it each time."""
    from pvit.interfaces import RegionInputs, Regions

    enc = pvit.build("region_encoder", "regionclip", model={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64,
                                                            "output_dim": 16}, min_size=64, max_size=64)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor([[64, 64], [64, 64]]))
    feats = enc.image_features(pixels)
    for boxes in ([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8]], [[0.12, 0.1, 0.52, 0.47], [0.2, 0.25, 0.9, 0.8]]):
        regions = Regions.from_per_image([torch.tensor([b]) for b in boxes])
        direct = enc(inputs, regions)
        cached = enc(RegionInputs(pixels, inputs.sizes, features=feats), regions)
        assert torch.allclose(direct, cached, atol=1e-6)
