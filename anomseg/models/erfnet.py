"""ERFNet (Romera et al., 2017): the standard 20-output Cityscapes network.

Module and parameter names follow the published ``erfnet.py`` exactly so that the published state
dict (keys ``module.encoder...`` / ``module.decoder...``) loads strictly. Input protocol of the
published weights: RGB in [0, 1], no mean/std normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.models.registry import check_rgb_batch, register_model


class DownsamplerBlock(nn.Module):
    """Stride-2 3x3 conv concatenated with a 2x2 max-pool, then BN + ReLU."""

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ninput, noutput - ninput, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class non_bottleneck_1d(nn.Module):  # the published (non-PEP 8) name
    """Residual block of two factorised (3x1, 1x3) conv pairs, the second one dilated."""

    def __init__(self, chann: int, dropprob: float, dilated: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=1e-03)
        self.conv3x1_2 = nn.Conv2d(
            chann, chann, (3, 1), stride=1, padding=(dilated, 0), bias=True, dilation=(dilated, 1)
        )
        self.conv1x3_2 = nn.Conv2d(
            chann, chann, (1, 3), stride=1, padding=(0, dilated), bias=True, dilation=(1, dilated)
        )
        self.bn2 = nn.BatchNorm2d(chann, eps=1e-03)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


class Encoder(nn.Module):
    """Three downsamplers with 1-D factorised residual blocks (dilations 2, 4, 8, 16 twice)."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        self.layers = nn.ModuleList([DownsamplerBlock(16, 64)])
        self.layers.extend(non_bottleneck_1d(64, 0.03, 1) for _ in range(5))
        self.layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            self.layers.extend(non_bottleneck_1d(128, 0.3, d) for d in (2, 4, 8, 16))
        # only used when training the encoder alone; kept so the published weights load strictly
        self.output_conv = nn.Conv2d(128, num_outputs, 1, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial_block(x)
        for layer in self.layers:
            x = layer(x)
        return x


class UpsamplerBlock(nn.Module):
    """Stride-2 transposed 3x3 conv, BN, ReLU."""

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            ninput, noutput, 3, stride=2, padding=1, output_padding=1, bias=True
        )
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Decoder(nn.Module):
    """Two upsamplers with residual blocks and a final 2x transposed conv to the outputs."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                UpsamplerBlock(128, 64),
                non_bottleneck_1d(64, 0, 1),
                non_bottleneck_1d(64, 0, 1),
                UpsamplerBlock(64, 16),
                non_bottleneck_1d(16, 0, 1),
                non_bottleneck_1d(16, 0, 1),
            ]
        )
        self.output_conv = nn.ConvTranspose2d(
            16, num_outputs, 2, stride=2, padding=0, output_padding=0, bias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class ERFNet(nn.Module):
    """Encoder-decoder ERFNet; ``forward`` returns raw logits at 1/1 resolution (H, W multiple of 8)."""

    arch = "erfnet"

    def __init__(
        self,
        num_outputs: int = 20,
        num_classes: int = 19,
        input_size: tuple[int, int] = (512, 1024),
    ) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.num_classes = num_classes  # classes scored by mIoU; channel 19 is Cityscapes "void"
        self.default_input_size = (int(input_size[0]), int(input_size[1]))
        self.encoder = Encoder(num_outputs)
        self.decoder = Decoder(num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB in [0, 1] (B, 3, H, W) -> {"logits": (B, num_outputs, H, W)} raw outputs and
        {"features": (B, 128, ceil(H/8), ceil(W/8))}, the encoder's output: what the
        feature-enriched head reads, and the input a fine-tuned decoder (outlier exposure)
        re-runs from without repeating the encoder."""
        check_rgb_batch(x, self.arch)
        h, w = x.shape[-2:]
        # three stride-2 stages: pad to a multiple of 8 so the skip concat and the 8x upsampling
        # line up, then crop back (no-op at the published 512x1024)
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feats = self.encoder(x)
        return {"logits": self.decoder(feats)[..., :h, :w].float(), "features": feats.float()}


@register_model("erfnet", kind="pixel", num_outputs=20, num_classes=19, input_size=(512, 1024))
def erfnet(
    num_outputs: int = 20, num_classes: int = 19, input_size: tuple[int, int] = (512, 1024)
) -> ERFNet:
    """ERFNet, Cityscapes: 20 outputs (19 classes + void), RGB in [0, 1], no normalisation."""
    return ERFNet(num_outputs=num_outputs, num_classes=num_classes, input_size=input_size)
