"""Tests for attnlab.data.similarity: backends against independent references, caching, offline use.

DreamSim is exercised through its real loader on random weights written in its exact file
layout (open_clip ViT-B/32 converted the way dreamsim's checkpoints are, plus a LoRA folder
saved by peft); the expected similarities come from open_clip itself with the LoRA merged.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from attnlab.core.dims import FRAME, FRAME2, OFFSET
from attnlab.data import similarity as S
from attnlab.data.metrics import gaussian_prior

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(S.DREAMSIM_ENV, raising=False)


def _smooth_video(
    f: int = 5, h: int = 32, w: int = 40, seed: int = 0, step: float = 6.0
) -> torch.Tensor:
    """Float (F, 3, H, W) frames in [-1, 1]: a blob drifting right over a noisy background."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.rand(3, h, w, generator=g) * 0.4 - 0.8
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frames = []
    for t in range(f):
        blob = torch.exp(-((yy - h / 2) ** 2 + (xx - 3 - step * t) ** 2) / 30.0)
        frames.append((bg + 1.5 * blob).clamp(-1, 1))
    return torch.stack(frames)


# ---------------------------------------------------------------- frames


def test_frame_conventions():
    """Frames are read by attnlab.data.video.to_unit_frames, the rule every frame input
    follows (before, similarity read every float as [-1, 1]: a pipeline's [0, 1] output came
    out as [0.5, 1])."""
    video = _smooth_video()  # float (F, 3, H, W) in [-1, 1]
    as_uint8 = ((video + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    a = S.similarity_matrix(video, "pixel", cache=False)
    b = S.similarity_matrix(as_uint8.numpy(), "pixel", cache=False)
    np.testing.assert_allclose(a.values, b.values, atol=2e-3)
    unit = (video + 1) / 2  # the same frames in [0, 1], channels last
    for same in (unit, unit.permute(0, 2, 3, 1), as_uint8.permute(0, 3, 1, 2)):
        np.testing.assert_allclose(S.similarity_matrix(same, "pixel").values, a.values, atol=2e-3)
    c = S.similarity_matrix(unit * 255, "pixel", value_range=(0, 255), cache=False)
    np.testing.assert_allclose(c.values, a.values, atol=2e-3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        S.similarity_matrix(video * 255, "pixel", cache=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        S.similarity_matrix(video - 0.5, "pixel", cache=False)
    # slight decoder overshoot is clamped; bfloat16 frames hash and compute
    over = video.clone()
    over[0, 0, 0, 0] = 1.03
    assert np.isfinite(S.similarity_matrix(over, "pixel").values).all()
    bf16 = S.similarity_matrix(video.bfloat16(), "pixel")
    np.testing.assert_allclose(bf16.values, a.values, atol=2e-2)
    assert bf16.attrs["frames_sha256"] != a.attrs["frames_sha256"]
    with pytest.raises(ValueError, match="int64"):
        S.similarity_matrix(as_uint8.long(), "pixel", cache=False)


# ---------------------------------------------------------------- pixel backend


def test_pixel_backend_is_pearson_correlation_of_pixels():
    video = _smooth_video(f=6, h=16, w=16, step=2.0)
    sim = S.similarity_matrix(video, "pixel", size=16, cache=False)
    assert sim.dims == (FRAME, FRAME2) and sim.shape == (6, 6)
    assert sim[FRAME].values.tolist() == list(range(6))
    flat = ((video + 1) / 2).flatten(1).double().numpy()
    np.testing.assert_allclose(sim.values, np.corrcoef(flat), atol=1e-10)
    assert sim.attrs["backend"] == "pixel"
    assert json.loads(sim.attrs["backend_settings"]) == {"size": 16}
    assert sim.attrs["value_range"] == "[-1, 1]"
    # the blob drifts away: similarity decreases with the frame interval
    assert sim.values[0, 1] > sim.values[0, 3] > sim.values[0, 5]


def test_pixel_backend_constant_frame_is_finite():
    video = _smooth_video(f=3)
    video[1] = 0.25
    sim = S.similarity_matrix(video, "pixel", cache=False).values
    assert np.isfinite(sim).all()
    assert sim[1].tolist() == [0.0, 1.0, 0.0]


# ---------------------------------------------------------------- ST-LPIPS backend


def test_stlpips_pairwise_distances_match_the_model_forward():
    video = _smooth_video(f=4, h=64, w=64)
    backend = S.get_backend("stlpips", short_side=64, tau=0.5)
    frames01 = (video + 1) / 2
    dist = backend.distances(frames01)
    model = backend.model
    with torch.no_grad():
        for a in range(4):
            for b in range(4):
                ref = float(model(video[a : a + 1], video[b : b + 1]))
                assert dist[a, b] == pytest.approx(ref, abs=2e-6)
    sim = S.similarity_matrix(video, backend, cache=False)
    np.testing.assert_allclose(sim.values, np.exp(-dist / 0.5), atol=1e-12)
    assert np.diag(sim.values).tolist() == [1.0] * 4
    assert (sim.values > 0).all() and (sim.values <= 1).all()
    assert json.loads(sim.attrs["backend_settings"]) == {
        "net": "alex",
        "short_side": 64,
        "tau": 0.5,
    }


def test_stlpips_weights_cover_the_whole_network():
    backend = S.get_backend("stlpips")
    state = torch.load(S._stlpips_weight_file("alex"), map_location="cpu", weights_only=True)
    loaded = backend.model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    trained = {k for k in loaded if not k.startswith(("lins.", "scaling_layer."))}
    assert trained <= set(state)  # no backbone parameter left at random init


def test_stlpips_loads_and_runs_with_the_network_blocked(tmp_path):
    """A fresh interpreter with every socket connection refused and an empty torch hub."""
    script = textwrap.dedent(
        """
        import socket, sys, urllib.request

        def refuse(*args, **kwargs):
            raise OSError("network blocked by test")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        try:  # the guard itself must work, or this test proves nothing
            urllib.request.urlopen("http://pypi.org", timeout=2)
            sys.exit("guard failed")
        except OSError as err:
            assert "network blocked" in str(err), err

        import torch
        from attnlab.data.similarity import similarity_matrix

        frames = torch.rand(3, 3, 48, 64) * 2 - 1
        frames[1] = frames[0]
        sim = similarity_matrix(frames, "stlpips", short_side=48, cache=False).values
        assert sim.shape == (3, 3) and abs(sim[0, 1] - 1) < 1e-6 and sim[0, 2] < 0.99, sim
        print("OFFLINE-OK", sim[0, 2])
        """
    )
    env = dict(os.environ)
    env.update(
        TORCH_HOME=str(tmp_path / "torch_home"),
        HF_HUB_OFFLINE="1",
        ATTNLAB_CACHE=str(tmp_path / "cache"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE-OK" in done.stdout
    # nothing was fetched into the (empty) torch hub
    assert not (tmp_path / "torch_home").exists() or not any(
        (tmp_path / "torch_home").rglob("*.pth")
    )


# ---------------------------------------------------------------- registry and cache


class _Counting(S.SimilarityBackend):
    name = "counting-test"
    constructed = 0
    calls = 0

    def __init__(self, scale: float = 1.0, device: str = "cpu") -> None:
        type(self).constructed += 1
        self.scale = scale

    def settings(self):
        return {"scale": self.scale}

    def matrix(self, frames):
        type(self).calls += 1
        flat = frames.flatten(1).double()
        d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
        return torch.exp(-self.scale * d).numpy()


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(S._BACKENDS, _Counting.name, _Counting)
    _Counting.constructed = _Counting.calls = 0
    return _Counting


def test_cache_hit_skips_the_backend(counting, tmp_path):
    video = _smooth_video()
    first = S.similarity_matrix(video, "counting-test")
    assert counting.calls == 1
    files = list((tmp_path / "cache" / "similarity").glob("*.npz"))
    assert len(files) == 1
    second = S.similarity_matrix(video, "counting-test")
    assert counting.calls == 1  # served from disk
    xr.testing.assert_identical(first, second)
    # another setting, other frames or cache=False recompute
    S.similarity_matrix(video, "counting-test", scale=2.0)
    assert counting.calls == 2
    S.similarity_matrix(video[:4], "counting-test")
    assert counting.calls == 3
    S.similarity_matrix(video, "counting-test", cache=False)
    assert counting.calls == 4
    # a reused instance hits the same entry as the name
    S.similarity_matrix(video, counting())
    assert counting.calls == 4


def test_cache_hit_with_a_real_backend(monkeypatch):
    video = _smooth_video()
    calls = []
    original = S.PixelBackend.embed

    def spy(self, frames):
        calls.append(1)
        return original(self, frames)

    monkeypatch.setattr(S.PixelBackend, "embed", spy)
    a = S.similarity_matrix(video, "pixel")
    b = S.similarity_matrix(video, "pixel")
    assert len(calls) == 1
    np.testing.assert_array_equal(a.values, b.values)


def test_registry(counting):
    assert {"dreamsim", "stlpips", "pixel", "counting-test"} <= set(S.available_backends())
    with pytest.raises(ValueError, match="available"):
        S.get_backend("no-such-backend")
    with pytest.raises(ValueError, match="already registered"):

        @S.register_backend(name="pixel")
        class Other(S.SimilarityBackend):
            pass

    with pytest.raises(TypeError, match="constructor"):
        S.similarity_matrix(_smooth_video(), counting(), scale=3.0)


def test_custom_backend_gets_symmetrised(monkeypatch):
    class Lopsided(S.SimilarityBackend):
        name = "lopsided-test"

        def matrix(self, frames):
            return np.triu(np.ones((len(frames), len(frames))))

    monkeypatch.setitem(S._BACKENDS, Lopsided.name, Lopsided)
    sim = S.similarity_matrix(_smooth_video(f=3), "lopsided-test", cache=False).values
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(sim, [[1, 0.5, 0.5], [0.5, 1, 0.5], [0.5, 0.5, 1]])


# ---------------------------------------------------------------- interval data, resampling


def test_similarity_by_interval():
    f = 5
    mat = np.fromfunction(lambda i, j: 1.0 - 0.1 * abs(i - j) + 0.01 * (i + j), (f, f))
    df = S.similarity_by_interval(mat)
    assert list(df.columns) == [FRAME, FRAME2, OFFSET, "similarity"]
    assert len(df) == f * (f - 1) // 2
    assert df.groupby(OFFSET).size().to_dict() == {d: f - d for d in range(1, f)}
    for row in df.itertuples(index=False):
        i, j, d, s = row
        assert j - i == d >= 1
        assert s == pytest.approx(mat[i, j])
    runs = xr.DataArray(
        np.stack([mat, mat * 0.5]), dims=("run", FRAME, FRAME2), coords={"run": ["real", "synth"]}
    )
    long = S.similarity_by_interval(runs)
    assert list(long.columns) == ["run", FRAME, FRAME2, OFFSET, "similarity"]
    assert len(long) == 2 * len(df)
    np.testing.assert_allclose(
        long[long.run == "synth"].similarity.values, 0.5 * df.similarity.values
    )


@pytest.mark.parametrize("n", [4, 7, 16, 23])
def test_resample_matrix(n):
    rng = np.random.default_rng(1)
    f = 10
    noise = rng.random((f, f)) * 0.2
    sim = gaussian_prior(f, 2.5) * 0.8 + 0.1 + (noise + noise.T) / 2
    np.fill_diagonal(sim, 1.0)
    out = S.resample_matrix(sim, n)
    assert isinstance(out, np.ndarray) and out.shape == (n, n)
    np.testing.assert_array_equal(out, out.T)
    np.testing.assert_array_equal(np.diag(out), 1.0)
    grid = np.arange(f, dtype=float)
    pos = np.linspace(0, f - 1, n)
    interp = RegularGridInterpolator((grid, grid), sim)
    expected = interp(np.stack(np.meshgrid(pos, pos, indexing="ij"), -1))
    off = ~np.eye(n, dtype=bool)
    np.testing.assert_allclose(out[off], expected[off], atol=1e-12)
    assert out[0, -1] == pytest.approx(sim[0, -1])  # corners aligned
    plain = S.resample_matrix(sim, n, keep_diagonal=False)
    np.testing.assert_allclose(np.diag(plain), np.diag(expected), atol=1e-12)


def test_resample_matrix_dataarray_keeps_extra_dims():
    sims = xr.DataArray(
        np.stack([gaussian_prior(8, 1.0), gaussian_prior(8, 3.0)]),
        dims=("run", FRAME, FRAME2),
        coords={"run": ["a", "b"]},
        attrs={"backend": "pixel"},
    )
    out = S.resample_matrix(sims, 5)
    assert out.dims == ("run", FRAME, FRAME2) and out.shape == (2, 5, 5)
    assert out.attrs["backend"] == "pixel"
    for k in range(2):
        np.testing.assert_allclose(out.values[k], S.resample_matrix(sims.values[k], 5))
    np.testing.assert_allclose(S.resample_matrix(sims, 8).values, sims.values, atol=1e-12)


# ---------------------------------------------------------------- DreamSim


def _open_clip_as_dreamsim(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """open_clip ViT state -> the DINO-ViT layout of dreamsim's `*_pretrain.pth.tar` files."""
    sd = {
        "cls_token": visual.class_embedding.reshape(1, 1, -1),
        "pos_embed": visual.positional_embedding[None],
        "patch_embed.proj.weight": visual.conv1.weight,
        "patch_embed.proj.bias": torch.zeros(visual.conv1.out_channels),
        "pos_drop.weight": visual.ln_pre.weight,  # dreamsim turns pos_drop into ln_pre
        "pos_drop.bias": visual.ln_pre.bias,
        "norm.weight": visual.ln_post.weight,
        "norm.bias": visual.ln_post.bias,
        "proj": visual.proj,
    }
    names = {
        "norm1": "ln_1",
        "attn.qkv": "attn.in_proj_",
        "attn.proj": "attn.out_proj",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i, block in enumerate(visual.transformer.resblocks):
        src = block.state_dict()
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                key = theirs + p if theirs.endswith("_") else f"{theirs}.{p}"
                sd[f"blocks.{i}.{ours}.{p}"] = src[key]
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


@pytest.fixture(scope="module")
def dreamsim_dir(tmp_path_factory):
    """Random open_clip_vitb32 DreamSim weights in dreamsim's exact layout, LoRA saved by peft."""
    import open_clip
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("dreamsim")
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    torch.save(
        {"state_dict": _open_clip_as_dreamsim(visual)}, root / "open_clip_vitb32_pretrain.pth.tar"
    )
    base = PerceptualModel(
        **dreamsim_args["model_config"]["open_clip_vitb32"],
        device="cpu",
        load_dir=str(root),
        normalize_embeds=True,
    )
    # DreamSim's published LoRA settings; lora_B is randomised so the adapter matters
    config = LoraConfig(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(root / "open_clip_vitb32_single_lora"))
    return root, visual, config


def _reference_similarity(
    visual, lora_dir: Path | None, config, frames_uint8: torch.Tensor
) -> np.ndarray:
    """Cosine of DreamSim-normalised open_clip embeddings with the LoRA merged by hand."""
    import copy

    from safetensors.torch import load_file

    merged = copy.deepcopy(visual)
    scale = config.lora_alpha / config.r
    with torch.no_grad():
        for i, block in enumerate(merged.transformer.resblocks):
            if lora_dir is None:
                break
            lora = load_file(str(lora_dir / "adapter_model.safetensors"))
            prefix = f"base_model.model.extractor_list.0.model.blocks.{i}.attn.qkv"
            a, b = lora[f"{prefix}.lora_A.weight"], lora[f"{prefix}.lora_B.weight"]
            block.attn.in_proj_weight += scale * (b @ a)
        x = (frames_uint8.permute(0, 3, 1, 2).float() / 255 - CLIP_MEAN) / CLIP_STD
        emb = merged(x).double()
    emb = emb - emb.mean(dim=1, keepdim=True)
    emb = emb / emb.norm(dim=1, keepdim=True)
    return (emb @ emb.T).numpy()


def test_dreamsim_real_loader_on_random_weights(dreamsim_dir):
    root, visual, config = dreamsim_dir
    assert S.dreamsim_missing_files(root, "open_clip_vitb32") == []
    g = torch.Generator().manual_seed(3)
    # 224 x 224 frames: DreamSim's own resize is then the identity
    frames = (torch.rand(4, 224, 224, 3, generator=g) * 255).to(torch.uint8)
    frames[2] = frames[0]
    hub_before = getattr(torch.hub, "_hub_dir", None)
    backend = S.get_backend("dreamsim", weights_dir=root, dreamsim_type="open_clip_vitb32")
    sim = S.similarity_matrix(frames, backend, cache=False)
    assert getattr(torch.hub, "_hub_dir", None) == hub_before
    assert sim.shape == (4, 4) and sim.dims == (FRAME, FRAME2)
    np.testing.assert_array_equal(sim.values, sim.values.T)
    np.testing.assert_allclose(np.diag(sim.values), 1.0, atol=1e-6)
    assert sim.values[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert sim.attrs["backend"] == "dreamsim"
    settings = json.loads(sim.attrs["backend_settings"])
    assert settings["dreamsim_type"] == "open_clip_vitb32"
    assert settings["weights_dir"] == str(root.resolve())
    expected = _reference_similarity(visual, root / "open_clip_vitb32_single_lora", config, frames)
    np.testing.assert_allclose(sim.values, expected, atol=1e-4)
    # the LoRA changes the result, so the check above also covers loading the adapter
    without_lora = _reference_similarity(visual, None, config, frames)
    assert np.abs(without_lora - expected).max() > 1e-3
    lora_b = [p for n, p in backend.load().named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_dreamsim_weights_dir_from_environment(dreamsim_dir, monkeypatch):
    root, _, _ = dreamsim_dir
    monkeypatch.setenv(S.DREAMSIM_ENV, str(root))
    backend = S.get_backend("dreamsim", dreamsim_type="open_clip_vitb32")
    assert backend.weights_dir == root.resolve()
    assert backend.device == torch.device("cpu")


@pytest.fixture
def no_network(monkeypatch):
    """Refuse and record every socket connection and torch.hub download."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(OSError, match="blocked"):  # the guard works
        urllib.request.urlopen("http://pypi.org", timeout=2)
    attempts.clear()
    return attempts


def test_dreamsim_missing_files_raise_without_network(tmp_path, no_network):
    weights = tmp_path / "weights"
    backend = S.get_backend("dreamsim", weights_dir=weights, dreamsim_type="open_clip_vitb32")
    with pytest.raises(S.DreamSimWeightsError) as err:
        S.similarity_matrix(_smooth_video(), backend, cache=False)
    msg = str(err.value)
    for name in (
        "open_clip_vitb32_pretrain.pth.tar",
        "open_clip_vitb32_single_lora/adapter_config.json",
        "open_clip_vitb32_single_lora/adapter_model.safetensors  (or adapter_model.bin)",
        "never downloads",
    ):
        assert name in msg
    assert no_network == []
    assert not weights.exists()  # dreamsim (which would mkdir it) was never called

    # partial layout: only what is absent is listed
    lora = weights / "ensemble_lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text("{}")
    (lora / "adapter_model.bin").write_bytes(b"")
    (weights / "clip_vitb16_pretrain.pth.tar").write_bytes(b"")
    missing = S.dreamsim_missing_files(weights, "ensemble")
    assert missing == [
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "facebookresearch_dino_main/hubconf.py",
        "checkpoints/dino_vitbase16_pretrain.pth",
    ]
    with pytest.raises(S.DreamSimWeightsError, match=r"torch\.hub") as err:
        S.get_backend("dreamsim", weights_dir=weights).load()
    assert "ensemble_lora" not in str(err.value).split("Expected layout")[0]
    assert no_network == []


def test_download_guard_refuses_and_restores():
    original = torch.hub.download_url_to_file
    with S._downloads_forbidden(), pytest.raises(S.DreamSimWeightsError, match="refused"):
        torch.hub.download_url_to_file("https://example.invalid/x.zip", "/nonexistent/x.zip")
    assert torch.hub.download_url_to_file is original


def test_dreamsim_needs_a_weights_dir_and_a_supported_type():
    with pytest.raises(S.DreamSimWeightsError, match="ATTNLAB_DREAMSIM_DIR"):
        S.get_backend("dreamsim")
    with pytest.raises(ValueError, match="dinov2"):
        S.get_backend("dreamsim", weights_dir=".", dreamsim_type="dinov2_vitb14")
