"""How a scanner stores an image (``render``, step 4): a multiplicative bias field, Rician noise,
the scanner's gain and offset, int16.

The bias field is the exponential of a random quadratic, a product of three 2-D factors
(``bias_field_factors``); the Rician noise is drawn in polar form (``add_rician_noise``). Both
are the distributions of generator version 3, at a fraction of its passes over the volume.
"""

from __future__ import annotations

import math

import numpy as np

from gbmmet.synth.sites import Acquisition


def bias_field_factors(rng: np.random.Generator, shape_kji: tuple[int, int, int], strength: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth multiplicative field, exp of a random quadratic in normalised coordinates.

    Returned as three factors of shapes (1, j, i), (k, 1, i) and (k, j, 1) whose product is the
    field: the quadratic's terms each involve at most two axes, so its exponential separates.
    """
    k, j, i = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape_kji)
    kk, jj, ii = k[:, None, None], j[None, :, None], i[None, None, :]
    # Terms: i, j, k, i^2 - 1/3, j^2 - 1/3, k^2 - 1/3, ij, ik, jk (the order of the draws).
    c = rng.normal(0.0, strength / 2.0, 9).astype(np.float32)
    third = np.float32(1 / 3)
    ji = np.exp(c[0] * ii + c[1] * jj + c[3] * (ii * ii - third) + c[4] * (jj * jj - third) + c[6] * ii * jj)
    ki = np.exp(c[2] * kk + c[5] * (kk * kk - third) + c[7] * ii * kk)
    kj = np.exp(c[8] * jj * kk)
    return ji, ki, kj


def add_rician_noise(signal: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """``signal`` (float32, changed in place) made the modulus of itself plus complex Gaussian
    noise of sd ``sigma`` per channel: Rician, as in a magnitude image.

    Drawn in polar form: the complex noise is s e^(i theta) with s^2 = 2 sigma^2 E (E standard
    exponential) and theta uniform, so |A + noise|^2 = A^2 + 2 A s cos(theta) + s^2: the same
    distribution as two normals, at about half the cost.
    """
    s2 = rng.standard_exponential(signal.shape, dtype=np.float32)
    s2 *= np.float32(2.0 * sigma * sigma)
    cross = rng.random(signal.shape, dtype=np.float32)
    cross *= np.float32(2.0 * math.pi)
    np.cos(cross, out=cross)
    cross *= np.sqrt(s2)
    cross *= signal
    cross *= np.float32(2.0)
    signal *= signal
    signal += cross
    signal += s2
    np.maximum(signal, 0.0, out=signal)  # rounding, where A + noise is nearly 0
    return np.sqrt(signal, out=signal)


class ScannerSignal:
    """How one acquisition stores relative intensities (float32 (k, j, i)): bias field, Rician
    noise, the scanner's gain (a per-patient factor, sd 10 %) and offset, int16.

    The bias field and gain are drawn from ``rng``, the noise from ``noise`` (default ``rng``): its
    own generator, so that how noise is drawn never shifts the other draws. The gain scales signal
    and noise alike, so it rides on a factor of the bias field and on the noise's sd. ``store``
    takes a slab of slices at a time (each slab's data stays in cache).
    """

    def __init__(self, acq: Acquisition, shape_kji: tuple[int, int, int], rng: np.random.Generator,
                 noise: np.random.Generator | None = None):
        self.rng = rng if noise is None else noise
        ji, self.ki, self.kj = bias_field_factors(rng, shape_kji, acq.bias)
        gain = acq.scale * math.exp(rng.normal(0.0, 0.1))
        self.ji = ji * np.float32(gain)
        self.sigma = acq.noise * gain
        self.offset = np.float32(acq.offset)

    def store(self, signal: np.ndarray, slices: slice = slice(None)) -> np.ndarray:
        """``signal`` (the slices ``slices`` of the volume; float32, used up) as int16."""
        signal *= self.ji
        signal *= self.ki[slices]
        signal *= self.kj[slices]
        add_rician_noise(signal, self.rng, self.sigma)
        signal += self.offset
        np.rint(signal, out=signal)
        np.clip(signal, -32768, 32767, out=signal)
        return signal.astype(np.int16)


def scanner_signal(arr: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Relative intensities on a native grid (float32, used up) as the scanner stores them, in one
    go (``ScannerSignal``)."""
    return ScannerSignal(acq, arr.shape, rng).store(arr)
