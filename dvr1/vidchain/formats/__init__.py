"""Readers of public dense-captioning / temporal-grounding annotations for VidChain (`dvr1 data import`).

Each module has the interface of :mod:`dvr1.data.formats` (``NAME``, ``KIND = "dense"``, ``DESCRIPTION``,
``read(annotations, videos, split) -> dvr1.data.formats.Imported`` of ``DenseCaptionRecord``s).
"""

DENSE_FORMATS = {
    "activitynet": "activitynet",
    "youcook2": "youcook2",
    "charades-sta": "charades_sta",
}
"""``--format`` name -> module name under ``dvr1.vidchain.formats``."""
