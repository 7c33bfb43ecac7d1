"""AstroMAE in torch: the architecture's widths, checkpoints in every accepted shape, and
refusal of a pickle that would run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from cosmicai.astromae.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cosmicai.astromae.config import products  # noqa: E402
from cosmicai.astromae.network import AstroMAE, AstroMAEConfig, count_macs  # noqa: E402
from cosmicai.exceptions import ModelError  # noqa: E402
from harness.pickles import ShellPayload  # noqa: E402


@pytest.fixture
def tiny() -> Any:
    torch.manual_seed(0)
    return AstroMAE(AstroMAEConfig.tiny()).eval()


def _batch(n: int = 4) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 5, 32, 32, generator=g) * 0.1, 15 + 5 * torch.rand(n, 5, generator=g)


def test_tiny_network_gives_one_redshift_per_galaxy(tiny: Any) -> None:
    images, magnitudes = _batch(7)
    with torch.no_grad():
        z = tiny(images, magnitudes)
    assert z.shape == (7,)
    assert torch.isfinite(z).all()


def test_default_widths_are_cosmicai_astromae() -> None:
    # GIVEN the default configuration (the widths CosmicAI runs)
    model = AstroMAE()
    # THEN its size and arithmetic are AstroMAE's: ~15.8M parameters, ~0.22 GFLOP a galaxy,
    # most of it in the ViT encoder
    parameters = sum(p.numel() for p in model.parameters())
    assert 15.7e6 < parameters < 15.9e6
    flops = count_macs(model)
    assert 0.21 < flops.gflop < 0.23
    assert flops.by_branch["vit"] / sum(flops.by_branch.values()) > 0.8


@pytest.mark.parametrize(
    "config",
    [
        AstroMAEConfig(),
        AstroMAEConfig.tiny(),
        AstroMAEConfig(dim=48, heads=4, depth=3, inception=(13, 10, 7, 9, 5), stem=6),
    ],
    ids=["default", "tiny", "odd-widths"],
)
def test_product_list_accounts_for_every_mac_the_network_runs(config: AstroMAEConfig) -> None:
    # GIVEN the torch network and the torch-free list of its products (the bench's ceiling)
    counted = count_macs(AstroMAE(config).eval())
    listed = products(config)
    # THEN they agree layer for layer in total, branch by branch
    by_branch: dict[str, int] = {}
    for p in listed:
        branch = {"magnitude": "magnitude_mlp"}.get(p.name.split(".")[0], p.name.split(".")[0])
        by_branch[branch] = by_branch.get(branch, 0) + p.macs
    assert by_branch == counted.by_branch


def test_preprocessing_is_part_of_the_network(tiny: Any) -> None:
    # GIVEN preprocessing fitted on data far from the defaults
    images, magnitudes = _batch(16)
    before = tiny(images, magnitudes).detach()
    tiny.preprocess.fit(images.numpy() * 100, magnitudes.numpy() + 3)
    # THEN the same raw inputs give different outputs: the constants live in the model
    assert not torch.allclose(before, tiny(images, magnitudes).detach())
    assert "preprocess.softening" in tiny.state_dict()


def test_our_checkpoint_round_trips_with_its_widths(tiny: Any, tmp_path: Path) -> None:
    save_checkpoint(tiny, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == tiny.config
    images, magnitudes = _batch()
    assert torch.equal(loaded(images, magnitudes), tiny(images, magnitudes))


def test_plain_state_dict_loads_with_given_widths(tiny: Any, tmp_path: Path) -> None:
    torch.save(tiny.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", AstroMAEConfig.tiny())
    images, magnitudes = _batch()
    assert torch.equal(loaded(images, magnitudes), tiny(images, magnitudes))


def test_state_dict_of_other_widths_is_refused_by_name(tiny: Any, tmp_path: Path) -> None:
    torch.save(tiny.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelError, match=r"sd\.pt does not fit this AstroMAE: \d+ missing"):
        load_checkpoint(tmp_path / "sd.pt")  # default widths


def test_pickled_dataparallel_model_loads_without_its_code(tiny: Any, tmp_path: Path) -> None:
    # GIVEN a whole model pickled from DataParallel, as CosmicAI saves its fine-tuned AstroMAE
    torch.save(torch.nn.DataParallel(tiny), tmp_path / "whole.pt")
    # WHEN it is loaded (no weights_only=False anywhere)
    loaded = load_checkpoint(tmp_path / "whole.pt", AstroMAEConfig.tiny())
    # THEN the weights are the same
    images, magnitudes = _batch()
    assert torch.equal(loaded(images, magnitudes), tiny(images, magnitudes))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    # GIVEN a checkpoint whose pickle calls os.system when loaded
    marker = tmp_path / "pwned"
    torch.save({"model": ShellPayload(marker)}, tmp_path / "evil.pt")
    # WHEN it is loaded
    with pytest.raises(ModelError, match=r"refused: .*(posix|os)\.system"):
        load_checkpoint(tmp_path / "evil.pt")
    # THEN the command never ran
    assert not marker.exists()


def test_unknown_class_in_a_whole_model_pickle_is_named(tiny: Any, tmp_path: Path) -> None:
    # GIVEN a pickled model holding an object of a class outside the known model packages
    tiny.extra = _Opaque()
    torch.save(tiny, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match=r"refused: .*_Opaque"):
        load_checkpoint(tmp_path / "odd.pt", AstroMAEConfig.tiny())


class _Opaque:
    pass


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
