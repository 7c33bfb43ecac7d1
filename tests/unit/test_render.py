"""Tests for the numpy galaxy-image renderer."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from numpy.typing import NDArray

from cosmicai.data import render
from cosmicai.data.catalogue import load_catalogue
from cosmicai.data.render import (
    PIXEL_SCALE_ARCSEC,
    SKY_SIGMA_NMGY,
    comoving_distance_mpc,
    render_galaxies,
)

F32 = NDArray[np.float32]


def nmgy(mag: NDArray[np.floating] | float) -> NDArray[np.float64]:
    return np.asarray(10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - 22.5)))


def uniform_sample(
    n: int, r_mag: float, g_minus_r: float, redshift: float
) -> tuple[F32, F32, NDArray[np.int64]]:
    """n galaxies with the same photometry and redshift, ids 0..n-1."""
    # Colours of a typical galaxy; only g-r matters to the model (it sets the bulge fraction).
    row = [r_mag + g_minus_r + 1.5, r_mag + g_minus_r, r_mag, r_mag - 0.4, r_mag - 0.7]
    mags = np.tile(np.asarray(row, dtype=np.float32), (n, 1))
    return mags, np.full(n, redshift, np.float32), np.arange(n, dtype=np.int64)


def fixed_params(
    n_bands_flux: list[float], bulge_fraction: list[float], *, disk_radius: float, fwhm: float
) -> render._GalaxyParams:
    """One galaxy with chosen parameters (no randomness)."""
    flux = np.asarray([n_bands_flux], dtype=np.float64)
    bt = np.asarray([bulge_fraction], dtype=np.float64)
    return render._GalaxyParams(
        bulge_flux=flux * bt,
        disk_flux=flux * (1 - bt),
        disk_radius=np.array([disk_radius]),
        bulge_radius=np.array([0.4 * disk_radius]),
        disk_q=np.array([0.5]),
        bulge_q=np.array([0.8]),
        angle=np.array([0.7]),
        offset=np.array([[0.2, -0.3]]),
        psf_fwhm=np.full((1, 5), fwhm),
    )


def test_output_is_float32_stamps_of_the_documented_shape() -> None:
    # GIVEN ten catalogue galaxies
    cat = load_catalogue("train")
    ids = np.arange(10, dtype=np.int64)

    # WHEN they are rendered
    images = render_galaxies(cat.magnitudes[:10], cat.redshift[:10], ids, seed=0)

    # THEN there is one finite 5 x 32 x 32 float32 stamp per galaxy
    assert images.shape == (10, 5, 32, 32)
    assert images.dtype == np.float32
    assert np.isfinite(images).all()


def test_empty_batch_gives_empty_stamps() -> None:
    # GIVEN no galaxies
    mags, z, ids = uniform_sample(0, 17.0, 0.7, 0.1)

    # WHEN / THEN rendering returns an empty batch of the right shape
    assert render_galaxies(mags, z, ids, seed=0).shape == (0, 5, 32, 32)


def test_same_inputs_give_identical_bytes() -> None:
    # GIVEN a batch of catalogue galaxies
    cat = load_catalogue("test")
    args = (cat.magnitudes[:40], cat.redshift[:40], np.arange(40, dtype=np.int64))

    # WHEN it is rendered twice
    first = render_galaxies(*args, seed=11, realization=2)
    second = render_galaxies(*args, seed=11, realization=2)

    # THEN the bytes are identical
    assert first.tobytes() == second.tobytes()


def test_image_does_not_depend_on_batch_membership_or_order() -> None:
    # GIVEN 75 catalogue galaxies (more than one internal block) with scattered and negative ids
    cat = load_catalogue("train")
    n = 75
    mags, z = cat.magnitudes[100 : 100 + n], cat.redshift[100 : 100 + n]
    ids = np.random.default_rng(5).integers(-(2**62), 2**62, size=n, dtype=np.int64)
    whole = render_galaxies(mags, z, ids, seed=3, realization=1)

    # WHEN the same galaxies are rendered shuffled, and some of them alone or in small chunks
    perm = np.random.default_rng(6).permutation(n)
    shuffled = render_galaxies(mags[perm], z[perm], ids[perm], seed=3, realization=1)
    alone = [
        render_galaxies(mags[i : i + 1], z[i : i + 1], ids[i : i + 1], seed=3, realization=1)
        for i in (0, 33, 74)
    ]
    chunks = np.concatenate(
        [
            render_galaxies(mags[s : s + 7], z[s : s + 7], ids[s : s + 7], seed=3, realization=1)
            for s in range(0, n, 7)
        ]
    )

    # THEN every galaxy's stamp is byte-identical to its stamp in the whole batch
    assert shuffled.tobytes() == whole[perm].tobytes()
    for i, image in zip((0, 33, 74), alone, strict=True):
        assert image.tobytes() == whole[i : i + 1].tobytes()
    assert chunks.tobytes() == whole.tobytes()


def test_realization_seed_and_object_id_each_change_the_image() -> None:
    # GIVEN one galaxy and its rendering
    mags, z, ids = uniform_sample(1, 16.5, 0.7, 0.1)
    base = render_galaxies(mags, z, ids, seed=1, realization=0)

    # WHEN any one of realization, seed or object id changes
    variants = [
        render_galaxies(mags, z, ids, seed=1, realization=1),
        render_galaxies(mags, z, ids, seed=2, realization=0),
        render_galaxies(mags, z, ids + 1, seed=1, realization=0),
    ]

    # THEN the image changes well beyond rounding (a new noise field alone moves every pixel)
    for variant in variants:
        assert np.abs(variant - base).mean() > 0.5 * min(SKY_SIGMA_NMGY)


def test_noise_flag_keeps_the_galaxy_and_drops_only_the_noise() -> None:
    # GIVEN a faint galaxy rendered with and without noise
    mags, z, ids = uniform_sample(64, 17.8, 0.6, 0.2)
    noisy = render_galaxies(mags, z, ids, seed=4)
    clean = render_galaxies(mags, z, ids, seed=4, noise=False)

    # WHEN the two are differenced
    residual = (noisy - clean).astype(np.float64)

    # THEN the residual is zero-mean noise at about the sky level: the same galaxy was drawn
    sky = np.asarray(SKY_SIGMA_NMGY)
    assert np.all(np.abs(residual.mean(axis=(0, 2, 3))) < 0.05 * sky)
    assert np.all(residual.std(axis=(0, 2, 3)) > 0.95 * sky)
    assert np.all(residual.std(axis=(0, 2, 3)) < 1.5 * sky)


def test_compact_galaxy_keeps_its_catalogue_flux() -> None:
    # GIVEN a tiny galaxy (0.5 arcsec disk, 0.2 arcsec bulge) with chosen per-band fluxes
    flux = [3.0, 10.0, 20.0, 28.0, 35.0]
    params = fixed_params(flux, [0.3, 0.4, 0.5, 0.6, 0.7], disk_radius=0.5, fwhm=1.4)

    # WHEN its noiseless image is rendered
    image = render._render_model(params)

    # THEN the stamp holds the full flux of every band to 1%: the de Vaucouleurs cusp, the PSF
    # and the pixel integration neither lose nor invent flux
    np.testing.assert_allclose(image[0].sum(axis=(1, 2)), flux, rtol=0.01)


def test_rendered_flux_matches_magnitudes_and_is_never_exceeded() -> None:
    # GIVEN 200 small, distant galaxies (random sizes, some large by scatter)
    mags, z, ids = uniform_sample(200, 17.8, 0.5, 0.3)

    # WHEN they are rendered without noise
    images = render_galaxies(mags, z, ids, seed=8, noise=False).astype(np.float64)

    # THEN the typical stamp holds the magnitude's flux within 3% in every band, and no stamp
    # holds more (flux beyond the stamp is lost, never created)
    ratio = images.sum(axis=(2, 3)) / nmgy(mags)
    assert np.all(np.median(ratio, axis=0) > 0.97)
    assert ratio.max() < 1.0 + 1e-4


def test_redder_bands_are_more_centrally_concentrated_for_a_fixed_psf() -> None:
    # GIVEN one galaxy whose bulge fraction rises from u to z and the same PSF in every band
    params = fixed_params([10.0] * 5, [0.3, 0.45, 0.6, 0.7, 0.8], disk_radius=2.0, fwhm=1.4)

    # WHEN it is rendered
    image = render._render_model(params)[0].astype(np.float64)

    # THEN the central 4 x 4 pixels hold a strictly larger share of the flux band by band
    concentration = image[:, 14:18, 14:18].sum(axis=(1, 2)) / image.sum(axis=(1, 2))
    assert np.all(np.diff(concentration) > 0)


def test_red_galaxies_have_redder_centres_on_average() -> None:
    # GIVEN 100 red (bulge-dominated) galaxies with their random per-band seeing
    mags, z, ids = uniform_sample(100, 17.0, 0.9, 0.15)

    # WHEN rendered without noise
    images = render_galaxies(mags, z, ids, seed=9, noise=False).astype(np.float64)

    # THEN the share of flux in the centre rises from u to z on average, and z beats u for
    # most individual galaxies despite seeing differences between bands
    concentration = images[:, :, 14:18, 14:18].sum(axis=(2, 3)) / images.sum(axis=(2, 3))
    assert np.all(np.diff(concentration.mean(axis=0)) > 0)
    assert (concentration[:, 4] > concentration[:, 0]).mean() > 0.85


def test_higher_redshift_galaxies_are_smaller() -> None:
    # GIVEN the same 100 galaxies (same photometry and ids) placed at z = 0.03 and z = 0.25
    near = uniform_sample(100, 16.0, 0.8, 0.03)
    far = uniform_sample(100, 16.0, 0.8, 0.25)

    # WHEN their noiseless r-band light is measured
    def central_share(images: F32) -> NDArray[np.float64]:
        r_band = images[:, 2].astype(np.float64)
        return np.asarray(r_band[:, 12:20, 12:20].sum(axis=(1, 2)) / r_band.sum(axis=(1, 2)))

    near_share = central_share(render_galaxies(*near, seed=2, noise=False))
    far_share = central_share(render_galaxies(*far, seed=2, noise=False))

    # THEN the distant versions are more concentrated (smaller on the sky), on average and for
    # nearly every galaxy
    assert far_share.mean() > near_share.mean() + 0.05
    assert (far_share > near_share).mean() > 0.95


def test_sky_sigma_follows_the_5_sigma_depth_formula() -> None:
    # GIVEN the SDSS 5-sigma depths and the nominal seeing
    depths = np.array([22.0, 22.2, 22.2, 21.3, 20.5])
    sigma_psf = 1.4 / (2 * math.sqrt(2 * math.log(2))) / PIXEL_SCALE_ARCSEC

    # WHEN the per-pixel sigma is derived from S/N = 5 in the PSF's noise-equivalent area
    expected = nmgy(depths) / (5 * np.sqrt(4 * np.pi * sigma_psf**2))

    # THEN the module uses exactly that
    np.testing.assert_allclose(SKY_SIGMA_NMGY, expected, rtol=1e-12)


def test_sky_noise_in_empty_corners_matches_the_formula() -> None:
    # GIVEN noisy renderings of faint, distant galaxies
    mags, z, ids = uniform_sample(150, 17.8, 0.5, 0.3)
    images = render_galaxies(mags, z, ids, seed=12).astype(np.float64)

    # WHEN the pixel spread is measured in the four 6 x 6 corners, far from the galaxy
    corners = np.concatenate(
        [
            images[:, :, :6, :6],
            images[:, :, :6, -6:],
            images[:, :, -6:, :6],
            images[:, :, -6:, -6:],
        ],
        axis=2,
    )
    measured = corners.std(axis=(0, 2, 3))

    # THEN it matches the sky sigma of each band within 15%
    np.testing.assert_allclose(measured, SKY_SIGMA_NMGY, rtol=0.15)


def regularised_lower_gamma(k: int, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(k, x) for integer k: 1 - exp(-x) * sum_{i<k} x**i / i!."""
    terms = sum(x**i / math.factorial(i) for i in range(k))
    return np.asarray(1.0 - np.exp(-x) * terms)


@pytest.mark.parametrize(
    ("sersic_n", "amp", "var"),
    [(1, render._EXP_AMP, render._EXP_VAR), (4, render._DEV_AMP, render._DEV_VAR)],
)
def test_gaussian_mixtures_reproduce_the_sersic_enclosed_light(
    sersic_n: int, amp: NDArray[np.float64], var: NDArray[np.float64]
) -> None:
    # GIVEN the exact Sérsic enclosed-light curve L(<r) = P(2n, b_n (r/r_e)^(1/n)), with b_n
    # found by bisection so that half the light is inside r_e
    lo, hi = 0.1, 20.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        half = regularised_lower_gamma(2 * sersic_n, np.array([mid]))[0]
        lo, hi = (mid, hi) if half < 0.5 else (lo, mid)
    b_n = 0.5 * (lo + hi)
    radii = np.logspace(-2, math.log10(30.0), 300)
    exact = regularised_lower_gamma(2 * sersic_n, b_n * radii ** (1.0 / sersic_n))

    # WHEN the mixture's enclosed light is computed (a 2-D Gaussian holds 1 - exp(-r²/2v))
    mixture = (amp[None, :] * (1 - np.exp(-(radii[:, None] ** 2) / (2 * var[None, :])))).sum(1)

    # THEN the total flux is exactly 1 and the curves agree to 0.002 everywhere
    assert amp.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(mixture - exact).max() < 0.002


def test_comoving_distance_matches_an_independent_integral() -> None:
    # GIVEN a few redshifts
    z = np.array([0.01, 0.1, 0.3, 1.0])

    # WHEN D_C is integrated here with a fine midpoint rule
    expected = []
    for zi in z:
        edges = np.linspace(0.0, zi, 20001)
        mid = 0.5 * (edges[1:] + edges[:-1])
        inv_e = 1.0 / np.sqrt(0.3 * (1 + mid) ** 3 + 0.7)
        expected.append(299792.458 / 70.0 * float((inv_e * np.diff(edges)).sum()))

    # THEN the module's table agrees to 1e-5, and z = 1 gives the textbook 3303.8 Mpc
    np.testing.assert_allclose(comoving_distance_mpc(z), expected, rtol=1e-5)
    assert comoving_distance_mpc(np.array([1.0]))[0] == pytest.approx(3303.8, abs=0.5)


@pytest.mark.parametrize(
    ("mags_shape", "z_shape", "ids_shape"),
    [((3, 4), (3,), (3,)), ((3, 5), (2,), (3,)), ((3, 5), (3,), (4,)), ((3, 5), (3, 1), (3,))],
)
def test_mismatched_shapes_are_rejected(
    mags_shape: tuple[int, ...], z_shape: tuple[int, ...], ids_shape: tuple[int, ...]
) -> None:
    # GIVEN inputs whose shapes disagree
    mags = np.full(mags_shape, 17.0, np.float32)
    z = np.full(z_shape, 0.1, np.float32)
    ids = np.zeros(ids_shape, np.int64)

    # WHEN / THEN rendering refuses them
    with pytest.raises(ValueError, match="expected magnitudes"):
        render_galaxies(mags, z, ids, seed=0)


def test_bad_values_are_rejected() -> None:
    # GIVEN valid inputs
    mags, z, ids = uniform_sample(2, 17.0, 0.7, 0.1)
    bad_mags = mags.copy()
    bad_mags[1, 3] = np.nan

    # WHEN / THEN non-finite magnitudes, float ids and negative seeds are refused
    with pytest.raises(ValueError, match="finite"):
        render_galaxies(bad_mags, z, ids, seed=0)
    with pytest.raises(ValueError, match="integers"):
        render_galaxies(mags, z, ids.astype(np.float64), seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        render_galaxies(mags, z, ids, seed=-1)
    with pytest.raises(ValueError, match=">= 0"):
        render_galaxies(mags, z, ids, seed=0, realization=-2)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_rendering_starts_no_threads() -> None:
    # GIVEN the process's current thread count
    before = len(os.listdir("/proc/self/task"))

    # WHEN a batch is rendered
    mags, z, ids = uniform_sample(64, 17.0, 0.7, 0.1)
    render_galaxies(mags, z, ids, seed=0)

    # THEN no thread was started (callers parallelise with processes)
    assert len(os.listdir("/proc/self/task")) == before
