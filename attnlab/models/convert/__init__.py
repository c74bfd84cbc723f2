"""Converters from the authors' original checkpoints to diffusers folders.

* ``convert_lavie(lavie_base.pt, SD_1_4_FOLDER, OUT)``: LaVie's base UNet (Vchitect/LaVie) on
  Stable Diffusion 1.4's VAE, CLIP text encoder and tokenizer -> ``TextToVideoSDPipeline`` with
  :class:`~attnlab.models.lavie.LaVieUNet` and LaVie's sampling schedule (DDPM, linear betas
  1e-4..0.02, as ``base/configs/sample.yaml``).
* ``convert_videocrafter2(model.ckpt, OUT)``: the lvdm ``LatentDiffusion`` checkpoint (UNet,
  KL-VAE, OpenCLIP ViT-H/14 text tower) ->
  :class:`~attnlab.models.videocrafter.VideoCrafter2Pipeline`.

The original key layouts (:func:`lavie_layout`, :func:`vc2_layout`) are written from the
authors' model definitions (LaVie ``base/models/{unet,unet_blocks,attention,resnet}.py``;
lvdm ``modules/networks/openaimodel3d.py``, ``modules/attention.py``,
``modules/networks/ae_modules.py``, ``models/ddpm3d.py``, open_clip's text tower). A
conversion checks the checkpoint against them first (missing, unexpected and mis-shaped keys
are reported by name), maps every key, and loads the result strictly: nothing is left over and
nothing is invented. Checkpoints are read as the authors' loaders read them
(:func:`load_checkpoint`): ``state_dict`` / ``ema`` / ``module`` wrappers, ``module.`` and
``_forward_module.`` (DeepSpeed) key prefixes, tensors shared by several keys (LaVie's one
rotary embedding) copied apart. Keys that the model as its authors run it never reads are
*dropped by name* and listed in the report (VideoCrafter2: the last OpenCLIP block, as lvdm
takes the penultimate layer; the text projection and logit scale; the training-schedule
buffers, which are checked against the scheduler written instead).

Modules: ``layout`` (checking and reading checkpoints, shared), ``lavie``, ``videocrafter2``.
"""

from attnlab.models.convert.lavie import (
    LAVIE_UNET_CONFIG,
    SD14_DDPM_SETTINGS,
    convert_lavie,
    lavie_layout,
    lavie_scheduler,
    lavie_unet_config,
)
from attnlab.models.convert.layout import (
    KEY_PREFIXES,
    CheckpointLayoutError,
    ConversionReport,
    Layout,
    check_layout,
    load_checkpoint,
    shared_keys,
)
from attnlab.models.convert.videocrafter2 import (
    VC2_CONV1D_KEYS,
    VC2_OPTIONAL,
    VC2_SCHEDULE_KEYS,
    VC2Config,
    convert_openclip_text,
    convert_vc2_unet,
    convert_videocrafter2,
    openclip_tokenizer,
    vc2_layout,
    vc2_text_layout,
    vc2_unet_config,
    vc2_unet_key_map,
    vc2_unet_layout,
    vc2_vae_layout,
)

__all__ = [
    "KEY_PREFIXES",
    "LAVIE_UNET_CONFIG",
    "SD14_DDPM_SETTINGS",
    "VC2_CONV1D_KEYS",
    "VC2_OPTIONAL",
    "VC2_SCHEDULE_KEYS",
    "CheckpointLayoutError",
    "ConversionReport",
    "Layout",
    "VC2Config",
    "check_layout",
    "convert_lavie",
    "convert_openclip_text",
    "convert_vc2_unet",
    "convert_videocrafter2",
    "lavie_layout",
    "lavie_scheduler",
    "lavie_unet_config",
    "load_checkpoint",
    "openclip_tokenizer",
    "shared_keys",
    "vc2_layout",
    "vc2_text_layout",
    "vc2_unet_config",
    "vc2_unet_key_map",
    "vc2_unet_layout",
    "vc2_vae_layout",
]
