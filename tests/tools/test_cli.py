"""The command line: each command works on a saved model and fails with one clear line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.tools.cli import main


def test_sites_prints_the_table(tiny_dirs, capsys):
    assert (
        main(["sites", str(tiny_dirs["tiny-animatediff"]), "--height", "72", "--width", "56"]) == 0
    )
    out = capsys.readouterr().out
    assert "UNetMotionModel (motion): 26 temporal self-attention layers, latent 9x7" in out
    assert "down_blocks.1.motion_modules.0.transformer_blocks.0.attn1  down   1      5  4" in out
    assert "sinusoidal(max 32)" in out


def test_sites_without_a_size_uses_the_size_the_pipeline_generates_at(tiny_dirs, capsys):
    from diffusers import DiffusionPipeline

    folder = str(tiny_dirs["tiny-modelscope"])
    pipe = DiffusionPipeline.from_pretrained(folder)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the pipeline's default height
    assert main(["sites", folder]) == 0
    out = capsys.readouterr().out
    assert "feature sizes at the model's default latent" in out
    assert main(["sites", folder, "--json"]) == 0
    default = capsys.readouterr().out
    assert main(["sites", folder, "--json", "--height", str(side), "--width", str(side)]) == 0
    assert default == capsys.readouterr().out
    assert '"h":null' not in default


@pytest.mark.parametrize("command", ["record", "generate", "probe"])
def test_the_default_prompt_is_one_the_model_knows(command):
    from attnlab.lab.experiments import ORGANISM_PROMPT
    from attnlab.tools.cli import _prompt, build_parser

    parser = build_parser()
    parse = lambda *a: parser.parse_args([command, *a, "--out", "x"])  # noqa: E731
    assert _prompt(parse()) == ORGANISM_PROMPT  # the default model: an organism
    assert _prompt(parse("--model", "organism-none")) == ORGANISM_PROMPT
    assert "polar bear" in _prompt(parse("--model", "tiny-modelscope"))
    assert _prompt(parse("--model", "organism-none", "--prompt", "a cat")) == "a cat"


def test_record_writes_a_store_with_provenance(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "run.zarr"
    args = ["record", "--model", str(tiny_dirs["tiny-modelscope"]), "--prompt", "a cat", "--frames", "6", "--steps", "2",
            "--seed", "7", "--height", "64", "--width", "48", "--record-levels", "0", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    ds = attnlab.load(out)
    assert ds[D.PROMPT].item() == "a cat" and ds[D.SEED].item() == 7 and ds.sizes[D.QUERY] == 6
    assert set(ds[D.LEVEL].values) == {0}
    assert main(args) == 0  # appends a second run
    assert attnlab.load(out).sizes[D.RUN] == 2


def test_generate_with_edits_and_recording(tiny_dirs, tmp_path):
    video, store = tmp_path / "v.gif", tmp_path / "g.zarr"
    args = ["generate", "--model", str(tiny_dirs["tiny-modelscope"]), "--frames", "6", "--steps", "2", "--height", "64",
            "--width", "48", "--edit", "tar:64D4", "--edit", "replace:ones@2", "--out", str(video), "--record", str(store), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert video.stat().st_size > 0
    edits = attnlab.edits.from_json(attnlab.load(store)[D.EDITS].item())
    assert edits == [attnlab.TAR("64D4"), attnlab.Replace("ones", levels=[2])]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sites", "/no/such/model"], "model folder '/no/such/model' does not exist"),
        (["record", "--model", "./missing-model", "--out", "x.zarr"], "does not exist"),
        (
            ["generate", "--model", "tiny-modelscope", "--edit", "blur:3", "--out", "x.mp4"],
            "unknown edit",
        ),
        (
            [
                "record",
                "--model",
                "tiny-modelscope",
                "--record-levels",
                "9",
                "--out",
                "x.zarr",
                "--frames",
                "4",
                "--steps",
                "1",
                "--height",
                "64",
                "--width",
                "48",
            ],
            r"level \[9\]",
        ),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith(f"attnlab {argv[0]}: error:"), err
    assert re.search(message, err[0])


def test_sites_on_a_model_without_temporal_attention(tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8)  # fmt: skip
    unet.save_pretrained(tmp_path / "image-model" / "unet")
    assert main(["sites", str(tmp_path / "image-model")]) == 2
    assert (
        "a 2D image UNet without a motion adapter has no temporal attention"
        in capsys.readouterr().err
    )


def test_transfer_from_a_real_video_file(ms_pipe, gen, samples):
    edit = attnlab.Transfer(
        samples["carphone"], similarity="pixel", frames=6, levels=[0], t_min=None
    )
    ref = gen(ms_pipe, num_frames=6)
    with attnlab.edit(ms_pipe, edit):
        video = gen(ms_pipe, num_frames=6)
    sim = edit.reference_similarity()
    assert sim.shape == (6, 6) and np.allclose(np.diag(sim), 1.0)
    assert (video - ref).abs().max() > 1e-4
    assert torch.equal(gen(ms_pipe, num_frames=6), ref)
    assert attnlab.edits.from_json(edit.to_json()) == edit  # the path round-trips
