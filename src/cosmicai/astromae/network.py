"""The AstroMAE photo-z network in PyTorch (needs the ``astromae`` extra; Lambda never imports it).

Three branches read one galaxy and a head joins them:

- a ViT encoder over the 5×32×32 image (8×8 patches → 16 tokens + a class token), whose pooled
  patch tokens go through a LayerNorm and a small MLP;
- an Inception CNN over the same image;
- an MLP over the five magnitudes;

concatenated into an MLP that gives one redshift. :class:`AstroMAEConfig` holds every width, so
tests build a tiny copy of the same code. The default widths are the ones CosmicAI runs (about
15.8M parameters, 0.22 GFLOP per galaxy).

Preprocessing lives in the network (:class:`Preprocess`, buffers fitted on training data), so
the exported ONNX graph takes partition arrays as stored: images in nanomaggies, magnitudes in
ugriz. That is the pipeline's model contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from cosmicai.astromae.config import AstroMAEConfig

__all__ = ["AstroMAE", "AstroMAEConfig", "FlopCount", "count_macs"]


class Preprocess(nn.Module):
    """Partition arrays → network inputs: asinh-scaled, standardised fluxes and magnitudes.

    The constants are buffers (saved with the weights, baked into the ONNX graph); fitted on
    training data with :meth:`fit`, identity-like until then.
    """

    softening: torch.Tensor
    image_mean: torch.Tensor
    image_std: torch.Tensor
    magnitude_mean: torch.Tensor
    magnitude_std: torch.Tensor

    def __init__(self, channels: int = 5, colour_basis: bool = False) -> None:
        super().__init__()
        self.colour_basis = colour_basis
        self.register_buffer("softening", torch.ones(1, channels, 1, 1))
        self.register_buffer("image_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("image_std", torch.ones(1, channels, 1, 1))
        self.register_buffer("magnitude_mean", torch.zeros(channels))
        self.register_buffer("magnitude_std", torch.ones(channels))

    def fit(self, images: npt.NDArray[np.float32], magnitudes: npt.NDArray[np.float32]) -> None:
        soft = np.median(np.abs(images), axis=(0, 2, 3)) + 1e-3
        scaled = np.arcsinh(images / soft[None, :, None, None])
        as_tensor = torch.as_tensor
        self.softening.copy_(as_tensor(soft, dtype=torch.float32).view(1, -1, 1, 1))
        self.image_mean.copy_(as_tensor(scaled.mean(axis=(0, 2, 3))).float().view(1, -1, 1, 1))
        self.image_std.copy_(as_tensor(scaled.std(axis=(0, 2, 3)) + 1e-6).float().view(1, -1, 1, 1))
        basis = self.basis(as_tensor(magnitudes).float()).numpy()
        self.magnitude_mean.copy_(as_tensor(basis.mean(axis=0)).float())
        self.magnitude_std.copy_(as_tensor(basis.std(axis=0) + 1e-6).float())

    def basis(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitudes, or the middle band and the adjacent-band colours (``colour_basis``).

        Slices and subtractions, not a matrix product: the INT8 quantizer would take a
        MatMul for a layer and round raw magnitudes to 8 bits."""
        if not self.colour_basis:
            return magnitude
        middle = magnitude.shape[1] // 2
        colours = magnitude[:, :-1] - magnitude[:, 1:]
        return torch.cat([magnitude[:, middle : middle + 1], colours], dim=1)

    def forward(self, image: torch.Tensor, magnitude: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = image / self.softening
        # asinh written out (odd-symmetric, precise for negative noise pixels): older ONNX
        # exporters have no symbolic for it and ORT's Asinh is slower than these four ops.
        a = torch.sign(s) * torch.log(torch.abs(s) + torch.sqrt(s * s + 1.0))
        x = (a - self.image_mean) / self.image_std
        m = (self.basis(magnitude.float()) - self.magnitude_mean) / self.magnitude_std
        return x, m


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, n, d))
        return out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class ViTEncoder(nn.Module):
    def __init__(self, c: AstroMAEConfig) -> None:
        super().__init__()
        tokens = (c.image_size // c.patch) ** 2
        self.patch_embed = nn.Conv2d(c.channels, c.dim, c.patch, stride=c.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, c.dim) * 0.02)
        self.blocks = nn.Sequential(
            *(Block(c.dim, c.heads, c.mlp_ratio, c.layer_norm_eps) for _ in range(c.depth))
        )
        self.norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.head = nn.Sequential(
            nn.Linear(c.dim, c.dim),
            nn.Linear(c.dim, c.branch_width),
            nn.ReLU(),
            nn.Linear(c.branch_width, c.branch_width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(x)
        # Mean of the patch tokens (not the class token), as the MAE fine-tuning recipe pools.
        out: torch.Tensor = self.head(self.norm(x[:, 1:].mean(dim=1)))
        return out


def conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Inception(nn.Module):
    """Parallel 1×1 | 1×1→3×3 | 1×1→5×5 | maxpool→1×1 branches, concatenated to ``cout``."""

    def __init__(self, cin: int, cout: int, *, wide: bool = True) -> None:
        super().__init__()
        branches = 4 if wide else 3
        width = [cout // branches + (1 if i < cout % branches else 0) for i in range(branches)]
        self.one = conv_bn(cin, width[0], 1)
        self.three = nn.Sequential(conv_bn(cin, width[1], 1), conv_bn(width[1], width[1], 3))
        self.five = (
            nn.Sequential(conv_bn(cin, width[2], 1), conv_bn(width[2], width[2], 5))
            if wide
            else None
        )
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn(cin, width[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.one(x), self.three(x)]
        if self.five is not None:
            parts.append(self.five(x))
        parts.append(self.pool(x))
        return torch.cat(parts, dim=1)


class InceptionBranch(nn.Module):
    def __init__(self, c: AstroMAEConfig) -> None:
        super().__init__()
        w = c.inception
        self.stem = nn.Sequential(nn.Conv2d(c.channels, c.stem, 1), nn.AvgPool2d(2))
        self.features = nn.Sequential(
            Inception(c.stem, w[0]),
            Inception(w[0], w[1]),
            nn.AvgPool2d(2),
            Inception(w[1], w[2]),
            Inception(w[2], w[3]),
            nn.AvgPool2d(2),
            Inception(w[3], w[4], wide=False),
        )
        flat = w[4] * (c.image_size // 8) ** 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, c.branch_width),
            nn.ReLU(),
            nn.Linear(c.branch_width, c.branch_width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(self.stem(x)))
        return out


class AstroMAE(nn.Module):
    """images ``[B,5,32,32]`` (nanomaggies) + magnitudes ``[B,5]`` → redshift ``[B]``."""

    def __init__(self, config: AstroMAEConfig | None = None) -> None:
        super().__init__()
        c = config or AstroMAEConfig()
        self.config = c
        self.preprocess = Preprocess(c.channels, c.colour_basis)
        self.vit = ViTEncoder(c)
        self.cnn = InceptionBranch(c)
        layers: list[nn.Module] = [nn.Linear(c.channels, c.magnitude_width), nn.ReLU()]
        for _ in range(c.magnitude_depth):
            layers += [nn.Linear(c.magnitude_width, c.magnitude_width), nn.ReLU()]
        self.magnitude_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(2 * c.branch_width + c.magnitude_width, c.head_width),
            nn.ReLU(),
            nn.Linear(c.head_width, 1),
        )

    def forward(self, image: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        x, m = self.preprocess(image, magnitude)
        joined = torch.cat([self.vit(x), self.cnn(x), self.magnitude_mlp(m)], dim=1)
        out: torch.Tensor = self.head(joined).squeeze(1)
        return out


@dataclass
class FlopCount:
    """Multiply-accumulates per galaxy, by branch (2 × MAC = FLOP)."""

    by_branch: dict[str, int] = field(default_factory=dict)

    @property
    def gflop(self) -> float:
        return 2 * sum(self.by_branch.values()) / 1e9


def count_macs(model: AstroMAE) -> FlopCount:
    """MACs of one galaxy through convolutions, linear layers and attention products."""
    c = model.config
    counts: dict[str, int] = {}

    def hook_for(branch: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                rows = out.numel() // out.shape[-1]
                macs = rows * module.in_features * module.out_features
            elif isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs = out.numel() * (module.in_channels // module.groups) * k
            else:
                return
            counts[branch] = counts.get(branch, 0) + macs

        return hook

    handles = []
    for branch in ("vit", "cnn", "magnitude_mlp", "head"):
        for module in getattr(model, branch).modules():
            handles.append(module.register_forward_hook(hook_for(branch)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, c.channels, c.image_size, c.image_size), torch.zeros(1, 5))
    finally:
        for h in handles:
            h.remove()
    tokens = (c.image_size // c.patch) ** 2 + 1
    counts["vit"] = counts.get("vit", 0) + c.depth * 2 * tokens * tokens * c.dim
    return FlopCount(counts)
