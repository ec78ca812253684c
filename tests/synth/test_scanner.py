"""How the scanner stores an image: Rician noise, the bias field, gain and offset (``scanner``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from gbmmet.synth.scanner import ScannerSignal, add_rician_noise, bias_field_factors
from gbmmet.synth.sites import Acquisition


@pytest.mark.parametrize("snr", [0.0, 1.5, 8.0])
def test_rician_noise_follows_the_rice_distribution(snr):
    sigma = 0.05
    signal = np.full(20000, snr * sigma, np.float32)
    noisy = add_rician_noise(signal, np.random.default_rng(7), sigma)
    # the modulus of (A + sigma n1) + i sigma n2: Rice(A / sigma) with scale sigma
    assert stats.kstest(noisy, stats.rice(b=snr, scale=sigma).cdf).pvalue > 0.01


def test_bias_field_factors_multiply_to_the_exponential_of_the_quadratic():
    shape = (7, 9, 11)
    ji, ki, kj = bias_field_factors(np.random.default_rng(3), shape, 0.3)
    k, j, i = (np.linspace(-1.0, 1.0, n)[s] for n, s in zip(
        shape, [np.s_[:, None, None], np.s_[None, :, None], np.s_[None, None, :]], strict=True))
    c = np.random.default_rng(3).normal(0.0, 0.15, 9)
    log_field = (c[0] * i + c[1] * j + c[2] * k + c[3] * (i * i - 1 / 3) + c[4] * (j * j - 1 / 3)
                 + c[5] * (k * k - 1 / 3) + c[6] * i * j + c[7] * i * k + c[8] * j * k)
    np.testing.assert_allclose(ji * ki * kj, np.exp(log_field), rtol=1e-5)


def test_a_uniform_signal_without_noise_or_bias_is_stored_as_scale_times_gain_plus_offset():
    acq = replace(Acquisition(spacing=(1.0, 1.0, 1.0), size=(6, 5, 4)), noise=0.0, bias=0.0,
                  scale=1000.0, offset=40.0)
    scanner = ScannerSignal(acq, (4, 5, 6), np.random.default_rng(0))
    stored = np.concatenate([scanner.store(np.ones((2, 5, 6), np.float32), slice(k, k + 2))
                             for k in (0, 2)])
    assert stored.dtype == np.int16 and stored.shape == (4, 5, 6)
    assert len(np.unique(stored)) == 1
    gain = (float(stored[0, 0, 0]) - 40.0) / 1000.0
    assert 0.6 < gain < 1.6  # a per-patient factor exp(N(0, 0.1))
