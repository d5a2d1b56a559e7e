"""Augmentations that keep word alignments valid, applied at corpus generation time.

Each takes float32 audio at 16 kHz and a ``numpy.random.Generator`` (so an
utterance's augmentation is a pure function of its seed) and returns new audio plus
the factor by which word times scale (only speed perturbation changes times).

- speed: resampling by factor f (tempo and pitch change together, as sox ``speed``);
  all times scale by 1/f.
- reverb: convolution with an exponentially decaying noise impulse response
  (RT60 drawn per utterance), direct path at lag 0, tail trimmed: times unchanged.
- noise: white, pink or brown noise at an SNR drawn per utterance: times unchanged.
- band: telephone band (300-3400 Hz) band-pass: times unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np

SR = 16000


@dataclass(frozen=True)
class AugmentSpec:
    """What to apply to one utterance (None = not applied). Serialised into manifests."""

    speed: Optional[float] = None
    rt60: Optional[float] = None
    noise: Optional[str] = None
    snr_db: Optional[float] = None
    telephone: bool = False

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


def draw_spec(rng: np.random.Generator, p: float = 0.7) -> AugmentSpec:
    """Random augmentation choices; each kind is applied with its own probability scaled by p."""
    speed = float(rng.choice([0.9, 0.95, 1.05, 1.1])) if rng.random() < 0.5 * p else None
    rt60 = float(rng.uniform(0.15, 0.6)) if rng.random() < 0.4 * p else None
    noise = str(rng.choice(["white", "pink", "brown"])) if rng.random() < 0.5 * p else None
    snr = float(rng.uniform(5.0, 30.0)) if noise else None
    tel = bool(rng.random() < 0.1 * p)
    return AugmentSpec(speed, rt60, noise, snr, tel)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    from scipy.signal import resample_poly

    fr = Fraction(factor).limit_denominator(100)
    # playing faster by f = fewer samples: resample by 1/f
    return resample_poly(x.astype(np.float64), fr.denominator, fr.numerator).astype(np.float32)


def reverberate(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    n = int(rt60 * SR)
    t = np.arange(n) / SR
    rir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    rir[0] = 1.0 / max(1e-3, 0.3)  # strong direct path at lag 0 keeps word times in place
    rir /= np.sqrt((rir**2).sum())
    y = fftconvolve(x.astype(np.float64), rir)[: len(x)]
    return _match_peak(y, x)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec = spec / (np.sqrt(f) if colour == "pink" else f)
    y = np.fft.irfft(spec, n)
    return y / (y.std() + 1e-12)


def add_noise(x: np.ndarray, colour: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = coloured_noise(len(x), colour, rng)
    p_sig = float(np.mean(x.astype(np.float64) ** 2)) + 1e-12
    noise *= np.sqrt(p_sig / (10 ** (snr_db / 10)) / (np.mean(noise**2) + 1e-12))
    return (x + noise).astype(np.float32)


def telephone_band(x: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, [300, 3400], btype="bandpass", fs=SR, output="sos")
    return sosfilt(sos, x.astype(np.float64)).astype(np.float32)


def _match_peak(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    peak_y, peak_r = np.abs(y).max() + 1e-12, np.abs(ref).max() + 1e-12
    return (y * (peak_r / peak_y)).astype(np.float32)


def apply(x: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """Apply ``spec``; returns (audio, time_scale) where new_time = old_time * time_scale."""
    scale = 1.0
    if spec.speed:
        x = speed_perturb(x, spec.speed)
        scale = 1.0 / spec.speed
    if spec.rt60:
        x = reverberate(x, spec.rt60, rng)
    if spec.telephone:
        x = telephone_band(x)
    if spec.noise:
        x = add_noise(x, spec.noise, spec.snr_db or 20.0, rng)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32), scale
