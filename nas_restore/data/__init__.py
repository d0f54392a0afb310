"""Data: built-in synthetic rain (``synthetic``) and the user's image / video folders (``folders``)."""

from nas_restore.data.folders import (DataError, FrameSequence, PairedImageFolder, VideoClipFolder, find_pair_dirs,
                                      load_image, open_dataset)
from nas_restore.data.synthetic import (RAIN_PRESETS, RainParams, SyntheticRainDataset, add_rain, make_clip,
                                        rain_layer, write_synthetic_folder)

__all__ = [
    "DataError", "FrameSequence", "PairedImageFolder", "VideoClipFolder", "find_pair_dirs", "load_image",
    "open_dataset", "RAIN_PRESETS", "RainParams", "SyntheticRainDataset", "add_rain", "make_clip", "rain_layer",
    "write_synthetic_folder",
]
