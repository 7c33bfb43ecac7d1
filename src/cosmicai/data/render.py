"""Render plausible SDSS-like 5-band (ugriz) galaxy cut-outs from magnitudes and a redshift.

No package we can reach ships real SDSS galaxy images with redshifts, so the images the pipeline
classifies are synthesised from the real catalogue photometry (:mod:`cosmicai.data.catalogue`).
The goal is images with the statistics that matter to a photometric-redshift network (total
flux per band equal to the catalogue magnitudes, sizes that shrink with distance, colour
gradients, SDSS seeing and noise), not a faithful model of any particular galaxy.

Model, per galaxy (all random numbers come from a generator seeded by
``(seed, realization, object_id)`` only, so an object renders identically in any batch):

* **Flux.** ``f = 10**(-0.4 * (m - 22.5))`` nanomaggies (the SDSS flux unit: 1 nmgy is
  m = 22.5 on the AB-like SDSS scale). The model's integral over the infinite plane equals ``f``
  in every band; what falls outside the 32 x 32 stamp is lost, as in a real cut-out.
* **Profile.** Bulge (de Vaucouleurs, Sérsic n = 4) + disk (exponential, n = 1), each drawn as a
  mixture of concentric Gaussians (:data:`_DEV_MIXTURE`, :data:`_EXP_MIXTURE`; fitted for this
  module, see there). Gaussians make the PSF convolution and the pixel integration analytic, so
  the cuspy de Vaucouleurs centre carries its correct flux however small the galaxy is.
* **Bulge fraction.** In r, ``logit(B/T) = -2.2 + 4.0 * t + 0.8 * N(0, 1)`` with
  ``t = clip((g - r - 0.45) / 0.5, 0, 1)``, so red galaxies are bulge-dominated and blue ones
  disk-dominated (the colour-morphology relation). Bulges are redder than disks, so ``logit(B/T)``
  rises by ``gamma ~ U(0.2, 0.5)`` per band from u to z: centres are redder than outskirts.
* **Shape.** Disk axis ratio ``q ~ U(0.2, 1)`` (uniform in cos(inclination) for random
  orientations, floored by disk thickness); bulge ``q ~ U(0.6, 1)``; one position angle
  ``U(0, pi)``. Shape and radii are shared by the bands; only B/T and the PSF vary per band.
* **Size.** Disk half-light radius (circularised, ``a * sqrt(q)``)
  ``R = 3.5 kpc * 10**(-0.12 * (M_r + 21)) * exp(0.35 * N(0, 1))`` (a size-luminosity relation
  ``R ~ L**0.3`` with log-normal scatter sigma_ln = 0.35, roughly the SDSS relations of Shen et
  al. 2003), turned into an angle with the angular-diameter distance of flat LambdaCDM
  (H0 = 70 km/s/Mpc, Omega_m = 0.3) and clipped to 0.5-6 arcsec. ``M_r`` uses the luminosity
  distance and no k-correction. The bulge half-light radius is ``U(0.25, 0.6) * R``.
* **Position.** Centre at the stamp centre (pixel 15.5, 15.5, between the four central pixels)
  plus a ``U(-0.5, 0.5)`` pixel offset per axis.
* **PSF.** Gaussian, FWHM ``U(1.3, 1.5)`` arcsec per band (SDSS median seeing is about 1.4 arcsec
  in r; York et al. 2000, Stoughton et al. 2002).
* **Pixels.** 0.396 arcsec (the SDSS imaging camera, Gunn et al. 1998). Integration over a pixel
  is the convolution with a unit box; since every Gaussian has already been widened by the PSF
  (sigma >= 1.3 pixels), the box is replaced by the Gaussian of equal variance (1/12 pixel**2)
  and the result sampled at pixel centres; the error this makes is far below the noise.
* **Noise.** Gaussian sky noise with a per-band sigma set by the SDSS 5-sigma point-source depths
  u 22.0, g 22.2, r 22.2, i 21.3, z 20.5 (York et al. 2000; SDSS DR imaging documentation)::

      sigma_psf = 1.4 arcsec / (2 sqrt(2 ln 2)) / 0.396   # nominal seeing, in pixels
      A         = 4 pi sigma_psf**2                       # noise-equivalent area of that PSF
      f_5       = 10**(-0.4 * (depth - 22.5))             # nanomaggies
      sigma_sky = f_5 / (5 sqrt(A))                        # per pixel, nanomaggies

  i.e. a point source at the depth, measured with the optimal (PSF-weighted) aperture whose
  effective area is ``A``, has S/N = 5. Sky noise depends on the sky, not on the seeing, so the
  nominal 1.4 arcsec is used for every object. Source photon noise is added as Gaussian noise of
  variance ``eta * max(model, 0)``, with ``eta`` (nanomaggies per photo-electron) the typical SDSS
  frame calibration (NMGYPERCOUNT) over the CCD gain; those are approximate values, and the term
  matters only in the cores of bright galaxies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")
STAMP_SIZE = 32
PIXEL_SCALE_ARCSEC = 0.396
DEPTH_5SIGMA_MAG: tuple[float, ...] = (22.0, 22.2, 22.2, 21.3, 20.5)
NOMINAL_FWHM_ARCSEC = 1.4
PSF_FWHM_RANGE_ARCSEC = (1.3, 1.5)
RADIUS_RANGE_ARCSEC = (0.5, 6.0)
H0_KM_S_MPC = 70.0
OMEGA_M = 0.3

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_N_BANDS = len(BANDS)
_R_INDEX = BANDS.index("r")
_G_INDEX = BANDS.index("g")


def _sky_sigma(depth_mag: float) -> float:
    sigma_psf_pix = NOMINAL_FWHM_ARCSEC / _FWHM_PER_SIGMA / PIXEL_SCALE_ARCSEC
    area = 4.0 * math.pi * sigma_psf_pix**2
    return math.pow(10.0, -0.4 * (depth_mag - 22.5)) / (5.0 * math.sqrt(area))


#: Sky noise sigma per pixel, nanomaggies, per band (formula in the module docstring).
SKY_SIGMA_NMGY: tuple[float, ...] = tuple(_sky_sigma(d) for d in DEPTH_5SIGMA_MAG)

# Nanomaggies per photo-electron: typical SDSS NMGYPERCOUNT (about 0.010, 0.004, 0.005, 0.007,
# 0.032) over typical CCD gains (about 1.7, 3.6, 4.8, 5.1, 4.7 e-/count). Approximate by design:
# it only sets the minor source-noise term.
_NMGY_PER_ELECTRON: tuple[float, ...] = (6e-3, 1.1e-3, 1.1e-3, 1.3e-3, 7e-3)

# Sérsic profiles as mixtures of circular Gaussians: (flux fraction, variance in units of the
# half-light radius squared). Fitted for this module by non-negative least squares on fixed
# variances, with the variances then tuned by coordinate descent, minimising the error of the
# enclosed-light curve L(<r) (out to 12 r_e for n = 1 and 40 r_e for n = 4) plus a small weight on
# the relative surface-brightness error over 0.05-8 r_e. The enclosed light is within 0.002 of
# the exact Sérsic curve everywhere (checked in tests/unit/test_render.py); the surface brightness
# is within a few per cent over 0.05-8 r_e. Fitting L(<r) rather than the profile is what keeps
# the flux right, which is the quantity the magnitudes pin down.
_EXP_MIXTURE: tuple[tuple[float, float], ...] = (
    (0.0080020033, 1.4588843799e-02),
    (0.0859945678, 1.0339976136e-01),
    (0.3113150256, 3.9823123483e-01),
    (0.4027483397, 1.0851293211e00),
    (0.1725364052, 2.3523082308e00),
    (0.0194036585, 4.5858275635e00),
)
_DEV_MIXTURE: tuple[tuple[float, float], ...] = (
    (0.0157122902, 4.8818589600e-04),
    (0.0459588806, 4.4184121224e-03),
    (0.1128836435, 2.9211755488e-02),
    (0.1936267692, 1.6260201280e-01),
    (0.2385277136, 8.0380735847e-01),
    (0.2116003829, 3.6907827568e00),
    (0.1379126946, 1.7720716130e01),
    (0.0437776254, 1.2719155805e02),
)


def _mixture_arrays(
    mixture: tuple[tuple[float, float], ...],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    amp = np.array([a for a, _ in mixture], dtype=np.float64)
    var = np.array([v for _, v in mixture], dtype=np.float64)
    # The tabulated fractions are rounded; renormalising makes the total flux exact.
    return amp / amp.sum(), var


_DEV_AMP, _DEV_VAR = _mixture_arrays(_DEV_MIXTURE)
_EXP_AMP, _EXP_VAR = _mixture_arrays(_EXP_MIXTURE)

# Random numbers drawn per object, in this order (changing it changes every image).
_U_BULGE_RATIO, _U_Q_DISK, _U_Q_BULGE, _U_ANGLE, _U_GAMMA, _U_DX, _U_DY = range(7)
_U_FWHM = slice(7, 7 + _N_BANDS)
_N_UNIFORM = 7 + _N_BANDS
_N_SIZE_SCATTER, _N_BT_SCATTER = range(2)
_N_NORMAL = 2

# Objects per vectorised block: large enough to amortise numpy's per-call overhead, small enough
# that the [block, 5, 1024] float32 temporaries stay in cache. Results do not depend on it.
_BLOCK = 32

_C_KM_S = 299_792.458
_ARCSEC_PER_RAD = 180.0 * 3600.0 / math.pi
_Z_MIN = 1e-4  # keeps distances positive for z <= 0; such objects hit the radius clip anyway
_Z_TABLE_MAX = 5.0
_Z_TABLE_STEP = 1e-3


def _comoving_distance_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # D_C(z) = (c/H0) * integral_0^z dz' / E(z'), by the trapezoid rule on a fine grid once at
    # import; per-object distances are then interpolated, which is elementwise and so cannot
    # depend on what else is in the batch.
    z = np.arange(0.0, _Z_TABLE_MAX + _Z_TABLE_STEP / 2, _Z_TABLE_STEP)
    inv_e = 1.0 / np.sqrt(OMEGA_M * (1.0 + z) ** 3 + (1.0 - OMEGA_M))
    steps = 0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(z)
    d_c = np.concatenate([[0.0], np.cumsum(steps)]) * (_C_KM_S / H0_KM_S_MPC)
    return z, d_c


_Z_GRID, _DC_GRID = _comoving_distance_table()


def comoving_distance_mpc(redshift: NDArray[np.float64]) -> NDArray[np.float64]:
    """Line-of-sight comoving distance in Mpc (flat LambdaCDM, H0 = 70, Omega_m = 0.3)."""
    z = np.clip(redshift, _Z_MIN, _Z_TABLE_MAX)
    return np.interp(z, _Z_GRID, _DC_GRID)


@dataclass(frozen=True)
class _GalaxyParams:
    """Everything that fixes a noiseless image; angles in arcsec, offsets in pixels."""

    bulge_flux: NDArray[np.float64]  # [N, 5] nanomaggies
    disk_flux: NDArray[np.float64]  # [N, 5]
    disk_radius: NDArray[np.float64]  # [N] circularised half-light radius, arcsec
    bulge_radius: NDArray[np.float64]  # [N]
    disk_q: NDArray[np.float64]  # [N] axis ratio b/a
    bulge_q: NDArray[np.float64]  # [N]
    angle: NDArray[np.float64]  # [N] position angle of the major axis, radians
    offset: NDArray[np.float64]  # [N, 2] (dx, dy) from the stamp centre, pixels
    psf_fwhm: NDArray[np.float64]  # [N, 5] arcsec


def _magnitude_to_nmgy(mag: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.power(10.0, -0.4 * (mag - 22.5))


def _params_from_draws(
    magnitudes: NDArray[np.float64],
    redshift: NDArray[np.float64],
    uniform: NDArray[np.float64],
    normal: NDArray[np.float64],
) -> _GalaxyParams:
    """Map each object's uniform [N, 12] and normal [N, 2] draws to physical parameters."""
    flux = _magnitude_to_nmgy(magnitudes)

    # Bulge fraction: colour sets the r-band value, bulges being redder raises it towards z.
    gr = magnitudes[:, _G_INDEX] - magnitudes[:, _R_INDEX]
    redness = np.clip((gr - 0.45) / 0.5, 0.0, 1.0)
    logit_r = -2.2 + 4.0 * redness + 0.8 * normal[:, _N_BT_SCATTER]
    gamma = 0.2 + 0.3 * uniform[:, _U_GAMMA]
    band_steps = np.arange(_N_BANDS, dtype=np.float64) - _R_INDEX
    logit = np.clip(logit_r[:, None] + gamma[:, None] * band_steps[None, :], -6.0, 6.0)
    bulge_fraction = 1.0 / (1.0 + np.exp(-logit))

    # Size: physical radius from a size-luminosity relation, over the angular-diameter distance.
    d_c = comoving_distance_mpc(redshift)
    z = np.clip(redshift, _Z_MIN, None)
    d_lum = d_c * (1.0 + z)
    d_ang = d_c / (1.0 + z)
    abs_mag_r = magnitudes[:, _R_INDEX] - 5.0 * np.log10(d_lum) - 25.0
    scatter = np.exp(0.35 * normal[:, _N_SIZE_SCATTER])
    radius_kpc = 3.5 * np.power(10.0, -0.12 * (abs_mag_r + 21.0)) * scatter
    radius_arcsec = radius_kpc / (d_ang * 1000.0) * _ARCSEC_PER_RAD
    disk_radius = np.clip(radius_arcsec, *RADIUS_RANGE_ARCSEC)

    lo, hi = PSF_FWHM_RANGE_ARCSEC
    return _GalaxyParams(
        bulge_flux=flux * bulge_fraction,
        disk_flux=flux * (1.0 - bulge_fraction),
        disk_radius=disk_radius,
        bulge_radius=disk_radius * (0.25 + 0.35 * uniform[:, _U_BULGE_RATIO]),
        disk_q=0.2 + 0.8 * uniform[:, _U_Q_DISK],
        bulge_q=0.6 + 0.4 * uniform[:, _U_Q_BULGE],
        angle=math.pi * uniform[:, _U_ANGLE],
        offset=uniform[:, [_U_DX, _U_DY]] - 0.5,
        psf_fwhm=lo + (hi - lo) * uniform[:, _U_FWHM],
    )


def _gaussian_terms(
    flux: NDArray[np.float64],
    radius_pix: NDArray[np.float64],
    q: NDArray[np.float64],
    amp: NDArray[np.float64],
    var: NDArray[np.float64],
    blur_var: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per (object, band, Gaussian): log weight and the two inverse-variance coefficients.

    A Gaussian of variance ``v * r**2`` stretched to axis ratio ``q`` at fixed circularised
    radius has variances ``v r**2 / q`` (major) and ``v r**2 q`` (minor); the isotropic PSF and
    pixel blur add ``blur_var`` to both without rotating the axes, so every term of an object
    shares the same principal axes and only two coordinates per pixel are needed.
    """
    base = var[None, :] * (radius_pix**2)[:, None]  # [N, K]
    var_major = (base / q[:, None])[:, None, :] + blur_var[:, :, None]  # [N, 5, K]
    var_minor = (base * q[:, None])[:, None, :] + blur_var[:, :, None]
    log_weight = (
        np.log(flux)[:, :, None]
        + np.log(amp)[None, None, :]
        - np.log(2.0 * math.pi * np.sqrt(var_major * var_minor))
    )
    return log_weight, -0.5 / var_major, -0.5 / var_minor


def _render_model(params: _GalaxyParams) -> NDArray[np.float32]:
    """Noiseless images [N, 5, 32, 32] in nanomaggies per pixel."""
    n = len(params.disk_radius)
    size = STAMP_SIZE
    sigma_psf_pix = params.psf_fwhm / _FWHM_PER_SIGMA / PIXEL_SCALE_ARCSEC
    blur_var = sigma_psf_pix**2 + 1.0 / 12.0  # [N, 5]: PSF plus the pixel box's variance

    bulge = _gaussian_terms(
        params.bulge_flux,
        params.bulge_radius / PIXEL_SCALE_ARCSEC,
        params.bulge_q,
        _DEV_AMP,
        _DEV_VAR,
        blur_var,
    )
    disk = _gaussian_terms(
        params.disk_flux,
        params.disk_radius / PIXEL_SCALE_ARCSEC,
        params.disk_q,
        _EXP_AMP,
        _EXP_VAR,
        blur_var,
    )
    # Term-major layout [K, N, 5] so that each term is one contiguous slab of the loop below.
    log_w, c_major, c_minor = (
        np.ascontiguousarray(np.concatenate([b, d], axis=2).transpose(2, 0, 1), dtype=np.float32)
        for b, d in zip(bulge, disk, strict=True)
    )

    # Pixel-centre coordinates relative to each object's centre, rotated into its major/minor
    # axes. Stamp centre is between the four central pixels, at (size - 1) / 2.
    pix = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    xs = np.tile(pix, size)  # column index varies fastest: x
    ys = np.repeat(pix, size)
    dx = xs[None, :] - params.offset[:, 0:1]
    dy = ys[None, :] - params.offset[:, 1:2]
    cos_a = np.cos(params.angle)[:, None]
    sin_a = np.sin(params.angle)[:, None]
    major2 = ((dx * cos_a + dy * sin_a) ** 2).astype(np.float32)  # [N, size*size]
    minor2 = ((dy * cos_a - dx * sin_a) ** 2).astype(np.float32)

    out = np.empty((n, _N_BANDS, size * size), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        a2 = major2[start:stop, None, :]
        b2 = minor2[start:stop, None, :]
        acc = out[start:stop]
        tmp = np.empty_like(acc)
        # Terms are summed one at a time in a fixed order, never by np.sum over an axis whose
        # reduction strategy (pairwise vs sequential) could change with the block's shape: the
        # bytes of an object must not depend on how many objects share its block.
        for k in range(log_w.shape[0]):
            np.multiply(c_major[k, start:stop, :, None], a2, out=tmp)
            tmp += c_minor[k, start:stop, :, None] * b2
            tmp += log_w[k, start:stop, :, None]
            np.exp(tmp, out=tmp)
            if k == 0:
                acc[...] = tmp
            else:
                acc += tmp
    return out.reshape(n, _N_BANDS, size, size)


def _check_inputs(
    magnitudes: NDArray[np.float32],
    redshift: NDArray[np.float32],
    object_id: NDArray[np.int64],
    seed: int,
    realization: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    mags = np.asarray(magnitudes, dtype=np.float64)
    z = np.asarray(redshift, dtype=np.float64)
    ids = np.asarray(object_id)
    n = len(z) if z.ndim == 1 else -1
    if n < 0 or mags.shape != (n, _N_BANDS) or ids.shape != (n,):
        raise ValueError(
            "expected magnitudes [N, 5], redshift [N] and object_id [N]; got "
            f"{mags.shape}, {z.shape} and {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"object_id must be integers, got dtype {ids.dtype}")
    if not (np.isfinite(mags).all() and np.isfinite(z).all()):
        raise ValueError("magnitudes and redshift must be finite")
    # SeedSequence only takes non-negative entries; a negative seed is more likely a bug than
    # a wish, so refuse it rather than fold it.
    if seed < 0 or realization < 0:
        raise ValueError(f"seed and realization must be >= 0, got {seed} and {realization}")
    return mags, z, ids.astype(np.int64, copy=False)


def render_galaxies(
    magnitudes: NDArray[np.float32],
    redshift: NDArray[np.float32],
    object_id: NDArray[np.int64],
    *,
    seed: int,
    realization: int = 0,
    noise: bool = True,
) -> NDArray[np.float32]:
    """Render [N, 5, 32, 32] float32 ugriz cut-outs in nanomaggies per pixel.

    ``magnitudes`` is [N, 5] (u, g, r, i, z), ``redshift`` and ``object_id`` are [N]. Each
    object's image depends only on ``(seed, realization, object_id)``, its magnitudes and its
    redshift, so rendering a dataset in any chunking or order gives identical bytes.
    ``realization`` gives independent renderings of the same objects (new shape, size scatter,
    PSF and noise). ``noise=False`` returns the noiseless model of exactly the same galaxy.

    Uses numpy only and starts no threads; run processes for parallelism.
    """
    mags, z, ids = _check_inputs(magnitudes, redshift, object_id, seed, realization)
    n = len(z)
    uniform = np.empty((n, _N_UNIFORM), dtype=np.float64)
    normal = np.empty((n, _N_NORMAL), dtype=np.float64)
    unit_noise = np.empty((n if noise else 0, _N_BANDS, STAMP_SIZE, STAMP_SIZE), np.float32)
    for i in range(n):
        # object_id is reinterpreted as unsigned 64-bit because SeedSequence refuses negative
        # entries; the map is one-to-one, so distinct ids still get distinct streams.
        rng = np.random.default_rng([seed, realization, int(ids[i]) & 0xFFFF_FFFF_FFFF_FFFF])
        rng.random(out=uniform[i])
        rng.standard_normal(out=normal[i])
        # Drawn last so that the galaxy itself is the same with and without noise.
        if noise:
            rng.standard_normal(dtype=np.float32, out=unit_noise[i])

    images = _render_model(_params_from_draws(mags, z, uniform, normal))
    if not noise:
        return images

    sky_var = np.square(np.asarray(SKY_SIGMA_NMGY, dtype=np.float32))[None, :, None, None]
    eta = np.asarray(_NMGY_PER_ELECTRON, dtype=np.float32)[None, :, None, None]
    sigma = np.sqrt(sky_var + eta * np.maximum(images, 0.0))
    images += sigma * unit_noise
    return images
