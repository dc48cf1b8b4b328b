"""pvit plugin: the ``box-stats`` region encoder (colour statistics inside each box plus its geometry)."""

import pvit

#: The pvit plugin API this plugin was written for (pvit reports a mismatch clearly).
PVIT_PLUGIN_API = 2


def make_box_stats(resolution: int = 32, geometry: bool = True):
    """Build the box-stats region encoder: one feature vector per box, no trainable weights.

    Options:
        resolution: side of the square thumbnail the statistics are computed on (pixels).
        geometry: append the box itself (x1, y1, x2, y2, width, height) to the colour statistics.

    The output width is 6 (RGB mean and standard deviation) plus 6 with ``geometry``.
    """
    from pvit_boxstats.encoder import BoxStatsEncoder  # torch is imported here, not when pvit loads plugins

    return BoxStatsEncoder(resolution=resolution, geometry=geometry)


@pvit.hookimpl
def pvit_register_region_encoders(register):
    register("box-stats", make_box_stats)
