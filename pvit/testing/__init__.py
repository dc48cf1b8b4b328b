"""Contract checks a plugin author runs on an instance of their component: region encoders, image encoders, projectors.

Each check raises ``AssertionError`` naming the component and the contract it broke, and returns a small
summary dict when everything holds:

    from pvit.testing import check_region_encoder
    check_region_encoder(pvit.build("region_encoder", "my-encoder"), image_encoder=my_vit)
"""

from __future__ import annotations

from pvit.testing.image_encoder import check_image_encoder
from pvit.testing.projector import check_projector
from pvit.testing.region_encoder import check_region_encoder
from pvit.testing.support import FULL_BOX, PLACEHOLDER_TOKENS, TINY_BOX, TYPICAL_BOX, random_images

__all__ = ["check_region_encoder", "check_image_encoder", "check_projector", "random_images", "FULL_BOX",
           "TINY_BOX", "TYPICAL_BOX", "PLACEHOLDER_TOKENS"]
