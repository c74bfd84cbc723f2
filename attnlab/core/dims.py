"""One vocabulary of dimension and coordinate names, from tensors to zarr to plots.

Every array attnlab produces uses these names; import them rather than spelling strings.

Attention maps (``probs`` and ``logits`` variables) have dimensions, in this order::

    run, step, layer, cfg, sample, [head], query_frame, key_frame, [y, x]

``head`` is present for per-head reductions, ``y``/``x`` for subsampled spatial maps.
Videos use ``frame, height, width, channel`` (uint8 RGB, as the store keeps them).
"""

from __future__ import annotations

# dimensions of attention arrays
RUN = "run"
STEP = "step"
LAYER = "layer"
CFG = "cfg"
SAMPLE = "sample"
HEAD = "head"
QUERY = "query_frame"
KEY = "key_frame"
Y = "y"
X = "x"
# windows of frames a windowed run's temporal attention ran on (AnimateDiff's FreeNoise): the
# window's first frame; maps have it after `layer`, frames counted within the window
WINDOW = "window"

# dimensions of videos and similarity matrices
FRAME = "frame"
CHANNEL = "channel"
HEIGHT = "height"
WIDTH = "width"
# a second frame axis, for frame-by-frame similarity matrices (frame x frame2)
FRAME2 = "frame2"
# the frame offset |i - j| for band-decay profiles and similarity-vs-interval data
OFFSET = "offset"
# consecutive frame pairs (i, i + 1), numbered by i: per-pair video metrics (optical flow,
# frame differences) in attnlab.lab.evaluation
FRAME_PAIR = "frame_pair"

# coordinates along `step`
TIMESTEP = "timestep"
# the pipeline component (denoiser) that ran the step: "unet", "transformer", "transformer_2"
# (Wan 2.2 A14B's low-noise expert), "denoiser" for a bare denoiser outside any pipeline
EXPERT = "expert"
# coordinates along `layer`
LEVEL = "level"
BLOCK = "block"
LAYER_H = "h"
LAYER_W = "w"
HEADS = "heads"
HEAD_DIM = "head_dim"
# coordinates along `run` (the frame PE is the model's: one per run, not per layer)
PE = "pe"
PE_MAX_LEN = "pe_max_len"
SOURCE = "source"  # "synthetic" | "real"
MODEL = "model"
PROMPT = "prompt"
SEED = "seed"
FRAMES = "frames"
VIDEO = "video"  # real-video id (file name or DAVIS sequence)
EDITS = "edits"  # JSON list of edit specs
PROVENANCE = "provenance"  # the run's whole provenance as JSON

# values of the `cfg` dimension: pipelines batch [uncond, cond]
UNCOND = "uncond"
COND = "cond"

# names of data variables
PROBS = "probs"
LOGITS = "logits"
# bool (step, layer, cfg): whether that layer's attention ran in that step and CFG half and
# was recorded; False marks a gap (its maps are NaN)
RAN = "ran"
# joint (full-3D) attention: mean attention mass of each query frame on the text tokens
# (dims as probs without key_frame)
TEXT_MASS = "text_mass"

MAP_DIMS = (RUN, STEP, LAYER, CFG, SAMPLE, HEAD, QUERY, KEY, Y, X)
