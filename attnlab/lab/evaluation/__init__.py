"""Video metrics: dynamics, coherence and text alignment, computed as the field computes them.

One call scores a video, a set of videos, or every run of an attnlab store, and returns an
:class:`xarray.Dataset` in the shared dimension vocabulary (``run``, ``frame``, ``frame_pair``,
``offset``)::

    ds = attnlab.evaluate("analyses/data/organism-none/sigma.zarr")   # every stored video
    ds = attnlab.evaluate(video, prompt="a peony blooming", metrics=["dynamic_degree", "clip_vl"])

- :mod:`.scoring`    :func:`evaluate`, :data:`METRICS`, :data:`DEFAULT_METRICS`
- :mod:`.results`    :func:`load_evaluation`, :func:`scalar_table`: ``evaluation/<run_id>`` groups
- :mod:`.flow`       :func:`optical_flow` (Farneback, RAFT), :func:`flow_magnitude`,
  :func:`load_raft`
- :mod:`.vbench`     :func:`dynamic_degree`, :func:`temporal_flickering`, :func:`motion_smoothness`,
  :func:`consistency`
- :mod:`.clip`       :class:`ClipScorer`, :func:`clip_vl`, :func:`mtscore`
- :mod:`.attention`  :func:`attention_measures` (attention-side measures, joined by run id)
- :mod:`.base`       :class:`EvaluationError` and the frame input of every metric

Frames are anything :func:`attnlab.data.video.to_uint8_frames` accepts; each metric's
docstring gives its source and formula.
"""

from attnlab.lab.evaluation.attention import attention_measures
from attnlab.lab.evaluation.base import EvaluationError
from attnlab.lab.evaluation.clip import (
    CLIP_CHECKPOINT_ENV,
    CLIP_MODEL_ENV,
    ClipScorer,
    ClipWeightsError,
    MTScoreUnavailableError,
    clip_vl,
    mtscore,
)
from attnlab.lab.evaluation.flow import (
    FARNEBACK,
    RAFT_WEIGHTS_ENV,
    TOP_FRACTION,
    RaftWeightsError,
    flow_magnitude,
    load_raft,
    optical_flow,
)
from attnlab.lab.evaluation.results import (
    EVALUATION_GROUP,
    is_store,
    load_evaluation,
    scalar_table,
)
from attnlab.lab.evaluation.scoring import DEFAULT_METRICS, METRICS, VIDEO_METRICS, evaluate
from attnlab.lab.evaluation.vbench import (
    COUNT_PER_16_FRAMES,
    THRESHOLD_PX_AT_256,
    consistency,
    dynamic_degree,
    interpolate_middle,
    motion_smoothness,
    temporal_flickering,
)

__all__ = [
    "CLIP_CHECKPOINT_ENV",
    "CLIP_MODEL_ENV",
    "COUNT_PER_16_FRAMES",
    "DEFAULT_METRICS",
    "EVALUATION_GROUP",
    "FARNEBACK",
    "METRICS",
    "RAFT_WEIGHTS_ENV",
    "THRESHOLD_PX_AT_256",
    "TOP_FRACTION",
    "VIDEO_METRICS",
    "ClipScorer",
    "ClipWeightsError",
    "EvaluationError",
    "MTScoreUnavailableError",
    "RaftWeightsError",
    "attention_measures",
    "clip_vl",
    "consistency",
    "dynamic_degree",
    "evaluate",
    "flow_magnitude",
    "interpolate_middle",
    "is_store",
    "load_evaluation",
    "load_raft",
    "motion_smoothness",
    "mtscore",
    "optical_flow",
    "scalar_table",
    "temporal_flickering",
]
