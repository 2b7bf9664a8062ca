"""CLIP ViT-B/32 vision tower (OpenAI weights), with its hook table.

Parameter names follow ``transformers``' ``CLIPVisionModelWithProjection`` (without the
``vision_model.`` prefix), so a ``transformers`` checkpoint directory, or a full ``CLIPModel``
state dict, loads directly; open_clip checkpoints (``visual.*`` keys) are converted on load.

Tokens: index 0 is CLS, then the 7x7 patches row-major. Hooks: ``embed`` (patch + class +
position embeddings), ``ln_pre``, per block ``blocks.N/resid_pre|attn_out|resid_mid|mlp_post|
mlp_out|resid_post``, and ``ln_post`` (the CLS token after the final layer norm, one token).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsae.models.cards import CLIP_EMBED as EMBED
from vsae.models.cards import CLIP_HEADS as HEADS
from vsae.models.cards import CLIP_LAYERS as LAYERS
from vsae.models.cards import CLIP_MEAN as MEAN
from vsae.models.cards import CLIP_MLP as MLP
from vsae.models.cards import CLIP_PATCH as PATCH
from vsae.models.cards import CLIP_STD as STD
from vsae.models.cards import CLIP_TOKENS as TOKENS
from vsae.models.cards import CLIP_VIT_B32_CARD as CARD
from vsae.models.cards import CLIP_WIDTH as WIDTH
from vsae.models.cards import clip_hook_key as _key
from vsae.models.hooks import HookPoint

MODEL_ID = CARD.model_id
HOOKS = CARD.hooks


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(WIDTH))
        self.patch_embedding = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH, bias=False)
        self.position_embedding = nn.Embedding(TOKENS, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [b, 49, d]
        cls = self.class_embedding.to(patches.dtype).expand(len(x), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, HEADS, d // HEADS).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp = _Attention(), _Mlp()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))


class ClipViT(nn.Module):
    """The vision tower; ``forward`` returns the 512-d image embeddings."""

    card = CARD
    model_id = MODEL_ID
    hooks = HOOKS

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.pre_layrnorm = nn.LayerNorm(WIDTH)  # (sic) the name transformers uses
        self.encoder = _Encoder()
        self.post_layernorm = nn.LayerNorm(WIDTH)
        self.visual_projection = nn.Linear(WIDTH, EMBED, bias=False)
        self.hook_points = nn.ModuleDict({_key(h): HookPoint() for h in HOOKS})

    def _hook(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.hook_points[_key(name)](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._hook("embed", self.embeddings(x))
        h = self._hook("ln_pre", self.pre_layrnorm(h))
        for i, layer in enumerate(self.encoder.layers):
            h = self._hook(f"blocks.{i}/resid_pre", h)
            h = self._hook(f"blocks.{i}/resid_mid", h + self._hook(f"blocks.{i}/attn_out",
                                                                   layer.self_attn(layer.layer_norm1(h))))
            hidden = layer.mlp.fc1(layer.layer_norm2(h))
            hidden = self._hook(f"blocks.{i}/mlp_post", hidden * torch.sigmoid(1.702 * hidden))  # QuickGELU
            h = self._hook(f"blocks.{i}/resid_post", h + self._hook(f"blocks.{i}/mlp_out", layer.mlp.fc2(hidden)))
        cls = self._hook("ln_post", self.post_layernorm(h[:, :1]))
        return self.visual_projection(cls[:, 0])

    @staticmethod
    def preprocess(images_bhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``[b, 224, 224, 3]`` to CLIP's input: ``[b, 3, 224, 224]`` scaled and normalised."""
        x = torch.as_tensor(images_bhwc).permute(0, 3, 1, 2).float() / 255.0
        return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)

    @staticmethod
    def adapt_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept transformers (``vision_model.*``, ``visual_projection.*``; text keys dropped)
        and open_clip (``visual.*``) checkpoints."""
        if any(k.startswith("visual.") for k in state):
            return _from_open_clip(state)
        out = {}
        for key, value in state.items():
            if key.startswith("vision_model."):
                key = key[len("vision_model."):]
            elif not key.startswith("visual_projection."):
                if key.startswith(("text_model.", "text_projection.", "logit_scale")):
                    continue
            if key.endswith("position_ids"):
                continue
            out[key] = value
        return out


def _from_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    v = {k[len("visual."):]: t for k, t in state.items() if k.startswith("visual.")}
    out = {
        "embeddings.class_embedding": v["class_embedding"],
        "embeddings.position_embedding.weight": v["positional_embedding"],
        "embeddings.patch_embedding.weight": v["conv1.weight"],
        "visual_projection.weight": v["proj"].t().contiguous(),
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = v[f"{theirs}.{p}"]
    for i in range(LAYERS):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, val = v[f"{src}attn.in_proj_{p}"].chunk(3)
            out[f"{dst}self_attn.q_proj.{p}"], out[f"{dst}self_attn.k_proj.{p}"], out[f"{dst}self_attn.v_proj.{p}"] = q, k, val
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{ours}.{p}"] = v[f"{src}{theirs}.{p}"]
    return out
