"""The cards of the built-in models, with the architecture tables their hook tables come from.

Kept apart from the networks (``inception_v1.py``, ``clip_vit.py``) so that a card — input
format, hook table, code version — is read without importing torch: a job checks its hooks in
a fraction of a second, before anything heavy starts. The networks import their constants from
here, so each number is written once.
"""

from __future__ import annotations

from vsae.models.card import HookInfo, ModelCard

# ---- InceptionV1 (Lucid's inception5h) -------------------------------------------------------

INCEPTION_V1 = "inception_v1.lucid"
INCEPTION_INPUT_SIZE = 224
# block: (input channels, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool_reduce, side)
MIXED = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32, 28),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64, 28),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64, 14),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64, 14),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64, 14),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64, 14),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128, 14),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128, 7),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128, 7),
}
STEM = (("conv2d0", 64, 112), ("conv2d1", 64, 56), ("conv2d2", 192, 56))
POOL_AFTER = {"mixed3b": "maxpool4", "mixed4e": "maxpool10"}  # stride-2 pools between stages


def inception_hook_key(name: str) -> str:
    """The HookPoint module name of an InceptionV1 hook (``/`` is not allowed in module names)."""
    return name.replace("/", "__")


def _inception_hooks() -> dict[str, HookInfo]:
    table: dict[str, HookInfo] = {}

    def add(name: str, channels: int, side: int) -> None:
        table[name] = HookInfo(name, f"hook_points.{inception_hook_key(name)}", "nchw", (channels, side, side))

    for name, channels, side in STEM:
        add(f"{name}/pre_relu", channels, side)
        add(name, channels, side)
    for block, (_, c1, b3, c3, b5, c5, cp, side) in MIXED.items():
        for branch, channels in (("1x1", c1), ("3x3_bottleneck", b3), ("3x3", c3),
                                 ("5x5_bottleneck", b5), ("5x5", c5), ("pool_reduce", cp)):
            add(f"{block}/{branch}/pre_relu", channels, side)
            add(f"{block}/{branch}", channels, side)
        add(block, c1 + c3 + c5 + cp, side)
    return table


INCEPTION_V1_CARD = ModelCard(
    model_id=INCEPTION_V1, input_size=INCEPTION_INPUT_SIZE, resample="bilinear", pixel_scale=255.0,
    mean=(117.0, 117.0, 117.0), std=(1.0, 1.0, 1.0), hooks=_inception_hooks(),
    code_version=1, stale_below=1,
    changes={1: "TensorFlow SAME padding for every conv and pool; version 0 padded conv2d0 "
                "symmetrically, which shifted the network by a pixel and changed every hook"},
    source="Lucid's inception5h graph (Szegedy et al. 2014, as studied in the Circuits thread): "
           "TensorFlow LRN and SAME padding, parameter names of the PyTorch port")

# ---- CLIP ViT-B/32 ---------------------------------------------------------------------------

CLIP_VIT_B32 = "clip_vit_b32.openai"
CLIP_WIDTH, CLIP_LAYERS, CLIP_HEADS, CLIP_MLP, CLIP_PATCH, CLIP_SIZE, CLIP_EMBED = 768, 12, 12, 3072, 32, 224, 512
CLIP_TOKENS = 1 + (CLIP_SIZE // CLIP_PATCH) ** 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_BLOCK_SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post")


def clip_hook_key(hook: str) -> str:
    """The HookPoint module name of a CLIP hook."""
    return hook.replace(".", "_").replace("/", "__")


def _clip_hooks() -> dict[str, HookInfo]:
    table = {}
    for name in ("embed", "ln_pre"):
        table[name] = HookInfo(name, f"hook_points.{clip_hook_key(name)}", "ntd", (CLIP_TOKENS, CLIP_WIDTH))
    for i in range(CLIP_LAYERS):
        for site in CLIP_BLOCK_SITES:
            name = f"blocks.{i}/{site}"
            table[name] = HookInfo(name, f"hook_points.{clip_hook_key(name)}", "ntd",
                                   (CLIP_TOKENS, CLIP_MLP if site == "mlp_post" else CLIP_WIDTH))
    table["ln_post"] = HookInfo("ln_post", "hook_points.ln_post", "ntd", (1, CLIP_WIDTH))
    return table


CLIP_VIT_B32_CARD = ModelCard(
    model_id=CLIP_VIT_B32, input_size=CLIP_SIZE, resample="bicubic", pixel_scale=1.0, mean=CLIP_MEAN,
    std=CLIP_STD, hooks=_clip_hooks(), code_version=1, stale_below=0,
    source="OpenAI CLIP ViT-B/32 vision tower (Radford et al. 2021); parameter names of transformers' "
           "CLIPVisionModelWithProjection, checked against it")

BUILTIN = {
    INCEPTION_V1_CARD.model_id: (INCEPTION_V1_CARD, "vsae.models.inception_v1:InceptionV1"),
    CLIP_VIT_B32_CARD.model_id: (CLIP_VIT_B32_CARD, "vsae.models.clip_vit:ClipViT"),
}
"""Built-in models: card and the ``module:class`` that builds the network (imported on build)."""
