"""AstroMAE's widths, and the matrix products they make, without torch.

:class:`AstroMAEConfig` is every width of the network (:mod:`.network` builds it in torch);
:func:`products` lists the products one galaxy costs, layer by layer, as GEMM shapes (a test
holds it to the torch network's own count). The benchmark times the linear ones alone on this
machine (:mod:`cosmicai.bench.ceiling`): a ceiling on the whole network's speed that needs
neither torch nor the model file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class AstroMAEConfig:
    image_size: int = 32
    channels: int = 5
    patch: int = 8
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    #: Width each image branch hands to the head.
    branch_width: int = 1096
    #: Inception widths: stem, then the modules at 16×16, 8×8 and 4×4.
    stem: int = 32
    inception: tuple[int, ...] = (64, 64, 32, 32, 12)
    magnitude_width: int = 1024
    magnitude_depth: int = 4
    head_width: int = 1024
    layer_norm_eps: float = 1e-6
    #: Feed the magnitude MLP r and the four colours (u−g, g−r, r−i, i−z), each standardised,
    #: instead of the five standardised magnitudes. The same information, linearly; but the
    #: magnitudes move together from galaxy to galaxy, so standardised one by one the colours
    #: photo-z depends on are small differences of large, correlated inputs.
    colour_basis: bool = False

    @classmethod
    def tiny(cls) -> AstroMAEConfig:
        """The same structure at toy widths, for tests."""
        return cls(
            dim=24,
            depth=2,
            heads=2,
            branch_width=32,
            stem=8,
            inception=(8, 8, 8, 8, 4),
            magnitude_width=16,
            magnitude_depth=1,
            head_width=16,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AstroMAEConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "inception" in known:
            known["inception"] = tuple(known["inception"])
        return cls(**known)


#: How the INT8 model computes a product: ``linear`` layers are quantized (MatMul/Gemm and
#: the attention's input projection); ``conv`` (as an im2col GEMM) and ``attention`` (the
#: score and value products of each head) stay in fp32.
ProductKind = Literal["linear", "conv", "attention"]


@dataclass(frozen=True)
class Product:
    """``count`` products of a ``rows × k`` by ``k × n`` matrix per galaxy."""

    name: str
    kind: ProductKind
    rows: int
    k: int
    n: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.count * self.rows * self.k * self.n


def _inception(name: str, cin: int, cout: int, side: int, *, wide: bool = True) -> list[Product]:
    """The products of one :class:`~cosmicai.astromae.network.Inception` module."""
    branches = 4 if wide else 3
    width = [cout // branches + (1 if i < cout % branches else 0) for i in range(branches)]
    rows = side * side
    out = [
        Product(f"{name}.one", "conv", rows, cin, width[0]),
        Product(f"{name}.three.reduce", "conv", rows, cin, width[1]),
        Product(f"{name}.three", "conv", rows, width[1] * 9, width[1]),
    ]
    if wide:
        out += [
            Product(f"{name}.five.reduce", "conv", rows, cin, width[2]),
            Product(f"{name}.five", "conv", rows, width[2] * 25, width[2]),
        ]
    out.append(Product(f"{name}.pool", "conv", rows, cin, width[-1]))
    return out


def products(c: AstroMAEConfig | None = None) -> list[Product]:
    """Every matrix product of one galaxy through AstroMAE at config ``c``."""
    c = c or AstroMAEConfig()
    side = c.image_size // c.patch
    tokens = side * side + 1
    hidden = int(c.dim * c.mlp_ratio)
    bw = c.branch_width
    out = [
        Product("vit.patch_embed", "conv", side * side, c.channels * c.patch**2, c.dim),
        Product("vit.qkv", "linear", tokens, c.dim, 3 * c.dim, c.depth),
        # scores (tokens × head width by head width × tokens) and values, per head
        Product("vit.scores", "attention", tokens, c.dim // c.heads, tokens, c.depth * c.heads),
        Product("vit.values", "attention", tokens, tokens, c.dim // c.heads, c.depth * c.heads),
        Product("vit.proj", "linear", tokens, c.dim, c.dim, c.depth),
        Product("vit.fc1", "linear", tokens, c.dim, hidden, c.depth),
        Product("vit.fc2", "linear", tokens, hidden, c.dim, c.depth),
        Product("vit.head.0", "linear", 1, c.dim, c.dim),
        Product("vit.head.1", "linear", 1, c.dim, bw),
        Product("vit.head.2", "linear", 1, bw, bw),
    ]
    w, s = c.inception, c.image_size
    out.append(Product("cnn.stem", "conv", s * s, c.channels, c.stem))
    out += _inception("cnn.i1", c.stem, w[0], s // 2)
    out += _inception("cnn.i2", w[0], w[1], s // 2)
    out += _inception("cnn.i3", w[1], w[2], s // 4)
    out += _inception("cnn.i4", w[2], w[3], s // 4)
    out += _inception("cnn.i5", w[3], w[4], s // 8, wide=False)
    out += [
        Product("cnn.head.0", "linear", 1, w[4] * (s // 8) ** 2, bw),
        Product("cnn.head.1", "linear", 1, bw, bw),
        Product("magnitude.0", "linear", 1, c.channels, c.magnitude_width),
        Product(
            "magnitude.hidden", "linear", 1, c.magnitude_width, c.magnitude_width, c.magnitude_depth
        ),
        Product("head.0", "linear", 1, 2 * bw + c.magnitude_width, c.head_width),
        Product("head.1", "linear", 1, c.head_width, 1),
    ]
    return out
