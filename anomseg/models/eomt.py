"""EoMT: Encoder-only Mask Transformer (Kerssies et al., CVPR 2025), after the official eomt.py.

A plain DINOv2 ViT with registers (timm, patch 16) does all the work: learned queries are
concatenated to the tokens before the last ``num_blocks`` blocks; in those blocks each query
attends only to the patches inside the mask it predicted just before the block (masked
attention); a class head and a mask head (MLP on queries · upscaled patch features) read the
final tokens. Masked attention is annealed during training: block ``i`` applies the mask to each
query with probability ``attn_mask_probs[i]`` (1: always, 0: never, i.e. the query attends
everywhere), a buffer so that official checkpoints carry their final values.

Parameter names match the official checkpoints (``network.`` stripped): ``encoder.backbone.*``,
``encoder.pixel_mean/std``, ``q.weight``, ``class_head``, ``mask_head.{0,2,4}``,
``upscale.{i}.conv1/conv2/norm``, ``attn_mask_probs``.
"""

from __future__ import annotations

import inspect
import math

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from anomseg.errors import CheckpointError
from anomseg.models.registry import check_rgb_batch, get_model_entry, list_models, register_model


def window_layout(
    h: int, w: int, window: tuple[int, int]
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Scaled size (H', W') so an h x w image just covers one ``window``, and window origins.

    Windows slide along the side that exceeds the window, evenly spaced from 0 to the end so
    that they cover the image with overlap (as EoMT evaluates Cityscapes). A start is truncated,
    not rounded, from ``j * (win - overlap / (n - 1))``, the official inference's arithmetic, so
    the windows (and the scores) are the official ones.
    """
    wh, ww = window
    s = max(wh / h, ww / w)
    hs, ws = max(wh, round(h * s)), max(ww, round(w * s))

    def starts(length: int, win: int) -> list[int]:
        n = math.ceil(length / win)
        overlap = n * win - length
        step = win - (overlap / (n - 1) if overlap > 0 else 0)
        return [int(j * step) for j in range(n)]

    return (hs, ws), [(t, l) for t in starts(hs, wh) for l in starts(ws, ww)]  # noqa: E741


class ScaleBlock(nn.Module):
    """2x upscaling: transposed conv, GELU, depthwise 3x3 conv, LayerNorm2d."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


class ViTEncoder(nn.Module):
    """The timm ViT plus the ImageNet mean/std it expects (buffers, as in the checkpoints)."""

    def __init__(
        self, backbone: str, img_size: tuple[int, int], patch_size: int, **vit_kw: object
    ) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            backbone,
            pretrained=False,
            img_size=tuple(img_size),
            patch_size=patch_size,
            num_classes=0,
            **vit_kw,
        )
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg["mean"]).reshape(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(cfg["std"]).reshape(1, -1, 1, 1))


class EoMT(nn.Module):
    """EoMT for semantic segmentation; ``predict_batch`` slides windows over any aspect ratio."""

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        num_q: int,
        num_blocks: int = 4,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.num_q = num_q
        self.num_blocks = num_blocks
        vit = encoder.backbone
        self.img_size = tuple(int(s) for s in vit.patch_embed.img_size)
        self.default_input_size = tuple(input_size) if input_size else self.img_size
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        dim = vit.embed_dim
        self.q = nn.Embedding(num_q, dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        # patch 16 -> two 2x blocks: masks at 1/4 of the input resolution
        num_upscale = max(1, int(math.log2(max(vit.patch_embed.patch_size))) - 2)
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(num_upscale)])

    # --- the network -------------------------------------------------------------------------

    @property
    def _vit(self) -> nn.Module:
        return self.encoder.backbone

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed tokens [queries, prefix, patches] -> mask logits (B,Q,4h,4w), class logits."""
        q = x[:, : self.num_q]
        patches = x[:, self.num_q + self._vit.num_prefix_tokens :]
        grid = patches.transpose(1, 2).reshape(x.shape[0], -1, *self._vit.patch_embed.grid_size)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(q), self.upscale(grid))
        return mask_logits, self.class_head(q)

    def _attn_mask(self, mask_logits: torch.Tensor, n_tokens: int, prob: float) -> torch.Tensor:
        """Boolean mask (True = may attend): query -> patch only inside its predicted mask.

        Each query keeps the mask with probability ``prob`` (annealing); a query that drops it
        attends to every token. Queries, prefix and patch tokens attend to all tokens anyway.
        """
        b = mask_logits.shape[0]
        mask = torch.ones(b, n_tokens, n_tokens, dtype=torch.bool, device=mask_logits.device)
        inside = F.interpolate(mask_logits, self._vit.patch_embed.grid_size, mode="bilinear") > 0
        start = self.num_q + self._vit.num_prefix_tokens
        mask[:, : self.num_q, start:] = inside.flatten(2)
        if prob < 1:
            dropped = torch.rand(b, self.num_q, device=mask.device) > prob
            mask[:, : self.num_q, start:][dropped] = True
        return mask

    @staticmethod
    def _attn(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """timm's Attention forward with a boolean attention mask shared by all heads."""
        b, n, _ = x.shape
        qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        if mask is not None:
            mask = mask[:, None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x.transpose(1, 2).reshape(b, n, -1)
        x = getattr(module, "norm", nn.Identity())(x)
        return module.proj_drop(module.proj(x))

    def _block(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One pre-norm ViT block with our masked attention."""
        x = x + block.drop_path1(block.ls1(self._attn(block.attn, block.norm1(x), mask)))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows (B,3,*img_size) RGB in [0,1] -> mask logits, class logits, patch features."""
        vit = self._vit
        x = (x - self.encoder.pixel_mean) / self.encoder.pixel_std
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        first = len(vit.blocks) - self.num_blocks
        probs = self.attn_mask_probs.tolist()
        for i, block in enumerate(vit.blocks):
            mask = None
            if i == first:
                x = torch.cat((self.q.weight[None].expand(x.shape[0], -1, -1), x), dim=1)
            if i >= first and probs[i - first] > 0:
                # at probability 0 the mask would be all True: skip the intermediate prediction
                # (only the final one is returned, so no deep supervision needs it either)
                mask_logits, _ = self._predict(vit.norm(x))
                mask = self._attn_mask(mask_logits, x.shape[1], probs[i - first])
            x = self._block(block, x, mask)
        x = vit.norm(x)
        mask_logits, class_logits = self._predict(x)
        patches = x[:, self.num_q + vit.num_prefix_tokens :]
        feats = patches.transpose(1, 2).reshape(x.shape[0], -1, *vit.patch_embed.grid_size)
        return mask_logits, class_logits, feats

    # --- inference on any image size ---------------------------------------------------------

    def windows(self, h: int, w: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """Scaled size (H', W') so the image just covers one window, and window origins."""
        return window_layout(h, w, self.img_size)

    @staticmethod
    def rescale(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``x`` resized to ``size`` like PIL's bilinear resize, which the official inference uses.

        Antialiased: plain bilinear interpolation aliases when shrinking (up to 112 grey levels
        off PIL on Fishyscapes' 2048 -> 1280). Rounded to whole grey levels, as the official
        pipeline's uint8 image is: within one grey level of PIL (tested on the 40 real images).
        """
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size, mode="bilinear", antialias=True).mul_(255).round_().div_(255)

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB in [0, 1] (B, 3, H, W) -> logits, pixel_class_logits, features (+ masks if 1 window)."""
        check_rgb_batch(x, getattr(self, "arch", "eomt"))
        b, _, h, w = x.shape
        (hs, ws), origins = self.windows(h, w)
        wh, ww = self.img_size
        xs = self.rescale(x, (hs, ws))
        crops = torch.cat([xs[..., t : t + wh, l : l + ww] for t, l in origins])  # noqa: E741
        mask_logits, class_logits, feats = self(crops)
        mask_logits, class_logits, feats = mask_logits.float(), class_logits.float(), feats.float()
        with torch.autocast(x.device.type, enabled=False):  # aggregate in fp32, not bf16
            return self._aggregate(x.shape, (hs, ws), origins, mask_logits, class_logits, feats)

    def _aggregate(
        self,
        shape: torch.Size,
        scaled: tuple[int, int],
        origins: list[tuple[int, int]],
        mask_logits: torch.Tensor,
        class_logits: torch.Tensor,
        feats: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-pixel scores per window, averaged where windows overlap, resized to (H, W)."""
        b, _, h, w = shape
        hs, ws = scaled
        wh, ww = self.img_size
        p = self._vit.patch_embed.patch_size[0]
        c, d = self.num_classes, feats.shape[1]
        logits = feats.new_zeros(b, c, hs, ws)
        pcl = torch.zeros_like(logits)
        count = feats.new_zeros(1, 1, hs, ws)
        fh, fw = round(hs / p), round(ws / p)
        feat = feats.new_zeros(b, d, fh, fw)
        fcount = feats.new_zeros(1, 1, fh, fw)
        # a head applied per window (head_geometry "window") needs each window's own maps when
        # the windows are not simply the image: several of them, or a rescaled image
        per_window = len(origins) > 1 or (hs, ws) != (h, w)
        window_scores = []
        for k, (t, l) in enumerate(origins):  # noqa: E741
            sl = slice(k * b, (k + 1) * b)
            m = F.interpolate(mask_logits[sl], (wh, ww), mode="bilinear").sigmoid()
            cl = class_logits[sl]
            scores = torch.einsum("bqhw,bqc->bchw", m, cl.softmax(-1)[..., :-1])
            logits[..., t : t + wh, l : l + ww] += scores
            if per_window:
                window_scores.append(scores)
            pcl[..., t : t + wh, l : l + ww] += torch.einsum("bqhw,bqc->bchw", m, cl[..., :-1])
            count[..., t : t + wh, l : l + ww] += 1
            # features are stitched on the patch grid of the scaled image (origin rounded)
            ft, fl = min(round(t / p), fh - wh // p), min(round(l / p), fw - ww // p)
            feat[..., ft : ft + wh // p, fl : fl + ww // p] += feats[sl]
            fcount[..., ft : ft + wh // p, fl : fl + ww // p] += 1
        logits, pcl = logits / count, pcl / count
        if (hs, ws) != (h, w):
            logits = F.interpolate(logits, (h, w), mode="bilinear")
            pcl = F.interpolate(pcl, (h, w), mode="bilinear")
        out = {"logits": logits, "pixel_class_logits": pcl, "features": feat / fcount}
        if len(origins) == 1:
            out["mask_logits"] = mask_logits
            out["class_logits"] = class_logits
        if per_window:  # (B, K, C, wh, ww) and (B, K, D, wh / p, ww / p), windows in origin order
            out["window_scores"] = torch.stack(window_scores, 1)
            out["window_features"] = feats.reshape(len(origins), b, *feats.shape[1:]).transpose(0, 1)
        return out


def eomt(
    backbone: str,
    img_size: tuple[int, int],
    num_classes: int,
    num_q: int,
    num_blocks: int = 4,
    patch_size: int = 16,
    input_size: tuple[int, int] | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    mlp_ratio: float | None = None,
) -> EoMT:
    """Build an EoMT on a timm DINOv2-with-registers ViT (optionally resized: dim/depth/heads)."""
    vit_kw = {
        k: v
        for k, v in (
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("mlp_ratio", mlp_ratio),
        )
        if v is not None
    }
    encoder = ViTEncoder(backbone, tuple(img_size), patch_size, **vit_kw)
    return EoMT(encoder, num_classes, num_q, num_blocks, input_size=input_size)


# the timm DINOv2-with-registers backbone of each width the official checkpoints use
BACKBONES = {
    384: "vit_small_patch14_reg4_dinov2",
    768: "vit_base_patch14_reg4_dinov2",
    1024: "vit_large_patch14_reg4_dinov2",
}
VIT_HEAD_DIM = 64  # DINOv2's head width: heads = width / 64 (not recorded in a state dict)


def _shape(state: dict, key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(
            f"{source}: not an EoMT checkpoint (no {key!r}; expected the official key names, "
            "optionally under 'network.')"
        )
    return tuple(state[key].shape)


def _window(n_patches: int, patch: int, source: str) -> tuple[int, int]:
    """The window a position embedding of ``n_patches`` was trained for: square or 1:2."""
    for ratio in (1, 2):  # official windows are square; ours (the demo's) are 1:2
        side = math.isqrt(n_patches // ratio)
        if side * side * ratio == n_patches:
            return side * patch, side * ratio * patch
    raise CheckpointError(
        f"{source}: position embedding of {n_patches} patches is neither a square nor a 1:2 "
        "grid; give the window explicitly (img_size)"
    )


def options_from_state_dict(state: dict, source: str = "checkpoint") -> dict:
    """The ``eomt`` options of the variant a state dict holds, read off its shapes.

    Query blocks from ``attn_mask_probs``, window from ``pos_embed``, queries from ``q.weight``,
    classes from ``class_head``, width / depth / MLP ratio / patch from the backbone's keys. The
    input size is that of the registered variant with the same settings, else the window.
    """
    from anomseg.models.checkpoints import _strip_prefixes

    state = _strip_prefixes(dict(state), set())
    bb = "encoder.backbone."
    num_q, dim = _shape(state, "q.weight", source)
    patch = _shape(state, bb + "patch_embed.proj.weight", source)[-1]
    n_pos = _shape(state, bb + "pos_embed", source)[1]
    regs = _shape(state, bb + "reg_token", source)[1]
    if regs != 4:
        raise CheckpointError(f"{source}: {regs} register tokens; EoMT's DINOv2 backbones have 4")
    prefix = bb + "blocks."
    blocks = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    depth = 1 + max(int(b) for b in blocks)
    hidden = _shape(state, bb + "blocks.0.mlp.fc1.weight", source)[0]
    opts: dict = {
        "backbone": BACKBONES.get(dim, BACKBONES[384]),
        "img_size": _window(n_pos, patch, source),
        "num_classes": _shape(state, "class_head.weight", source)[0] - 1,
        "num_q": num_q,
        "num_blocks": _shape(state, "attn_mask_probs", source)[0],
        "patch_size": patch,
    }
    # a non-standard width (or depth, MLP) is a resized ViT: say so to timm
    if dim not in BACKBONES:
        opts.update(embed_dim=dim, num_heads=max(1, dim // VIT_HEAD_DIM))
    if depth != {384: 12, 768: 12, 1024: 24}.get(dim):
        opts["depth"] = depth
    if hidden != 4 * dim:
        opts["mlp_ratio"] = hidden / dim
    builder = {
        k: p.default
        for k, p in inspect.signature(eomt).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    shape_keys = set(builder) - {"input_size"} | set(opts)
    mine = {**builder, **opts}
    opts["input_size"] = opts["img_size"]
    for name in list_models():
        entry = get_model_entry(name)
        theirs = {**builder, **entry.defaults}
        same = all(theirs.get(k) == mine.get(k) for k in shape_keys)
        if entry.builder is eomt and name != "eomt" and same:
            opts["input_size"] = tuple(theirs["input_size"])  # a known variant: its input size
            break
    return opts


# settings of the checkpoints in ../shared/schemas/eomt_official_state_dicts.json; `eomt` reads
# them off any checkpoint, the other names are shortcuts for the known variants
register_model(
    "eomt",
    "EoMT of the variant its checkpoint holds (window, queries, classes, query blocks, width "
    "and depth read off the file); without one: the Cityscapes ViT-L",
    from_state_dict=options_from_state_dict,
    kind="mask",
    backbone="vit_large_patch14_reg4_dinov2",
    img_size=(1024, 1024),
    num_classes=19,
    num_q=100,
    num_blocks=4,
    input_size=(1024, 2048),
)(eomt)
register_model(
    "eomt_vit_large_1024",
    "EoMT ViT-L/16 (DINOv2 reg4), Cityscapes semantic (official), 1024x1024 windows, 4 blocks",
    kind="mask",
    backbone="vit_large_patch14_reg4_dinov2",
    img_size=(1024, 1024),
    num_classes=19,
    num_q=100,
    num_blocks=4,
    input_size=(1024, 2048),
)(eomt)
register_model(
    "eomt_vit_base_seed_1024",
    "EoMT ViT-B/16 (DINOv2 reg4), Cityscapes semantic (the seed's), 1024x1024 windows, 3 blocks",
    kind="mask",
    backbone="vit_base_patch14_reg4_dinov2",
    img_size=(1024, 1024),
    num_classes=19,
    num_q=100,
    num_blocks=3,
    input_size=(1024, 2048),
)(eomt)
register_model(
    "eomt_vit_small_640",
    "EoMT ViT-S/16 (DINOv2 reg4), COCO panoptic classes (133), 640x640 windows, 3 blocks",
    kind="mask",
    backbone="vit_small_patch14_reg4_dinov2",
    img_size=(640, 640),
    num_classes=133,
    num_q=200,
    num_blocks=3,
    input_size=(640, 640),
)(eomt)
register_model(
    "eomt_tiny",
    "EoMT with ViT-Tiny dims (dim 192, 3 heads; 12 blocks by default, the demo-eomt model 8),"
    " 19 classes, 256x512 windows (demo)",
    kind="mask",
    backbone="vit_small_patch14_reg4_dinov2",
    embed_dim=192,
    depth=12,
    num_heads=3,
    img_size=(256, 512),
    num_classes=19,
    num_q=50,
    input_size=(256, 512),
)(eomt)
