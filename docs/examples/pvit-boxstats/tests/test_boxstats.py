"""The box-stats plugin honours pvit's region-encoder contract and is found through its entry point."""

import pvit
from pvit.interfaces import Regions
from pvit.testing import check_region_encoder


def test_registered_under_its_name():
    assert "box-stats" in pvit.components("region_encoder")


def test_contract():
    encoder = pvit.build("region_encoder", "box-stats", resolution=16)
    report = check_region_encoder(encoder)
    assert report["output_shape"] == (5, 1, 12)  # 2 + 3 boxes on 2 images, one 12-wide token each
    assert report["trainable_params"] == 0


def test_colour_of_a_box():
    from PIL import Image

    import torch

    image = Image.new("RGB", (40, 20), (0, 0, 255))  # blue ...
    image.paste((255, 0, 0), (0, 0, 20, 20))  # ... with a red left half
    encoder = pvit.build("region_encoder", "box-stats", resolution=8, geometry=False)
    inputs = encoder.collate([encoder.prepare(image)])
    regions = Regions.from_per_image([torch.tensor([[0.0, 0.0, 0.3, 1.0], [0.7, 0.0, 1.0, 1.0]])])  # one image
    left, right = encoder(inputs, regions)[:, 0]
    assert torch.allclose(left[:3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # red mean
    assert torch.allclose(right[:3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)  # blue mean
    assert float(left[3:].max()) < 1e-2  # a uniform box has (almost) no spread
