"""A simulated correlator: visibilities of a few drifting point sources plus noise.

Deterministic for a given seed and integration start time, so tests can rely on shapes and
values. No OCS or Twisted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

POLARIZATIONS = ("XX", "XY", "YX", "YY")


@dataclass
class SimulatedCorrelator:
    """Visibilities ``[baseline, channel, polarization]`` (complex64) per integration.

    Args:
        n_antennas: antennas; baselines are every pair including autocorrelations.
        n_channels: frequency channels.
        f_start_hz, bandwidth_hz: the band the channels span.
        n_sources: point sources drifting across the sky.
        seed: seeds antenna positions, sources and noise.
    """

    n_antennas: int = 8
    n_channels: int = 64
    f_start_hz: float = 30e6
    bandwidth_hz: float = 60e6
    n_sources: int = 3
    seed: int = 0
    noise: float = 0.05
    baselines: np.ndarray = field(init=False)
    frequencies: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.baselines = np.array(
            [(i, j) for i in range(self.n_antennas) for j in range(i, self.n_antennas)],
            dtype=np.int32,
        )
        width = self.bandwidth_hz / self.n_channels
        self.frequencies = self.f_start_hz + width * (np.arange(self.n_channels) + 0.5)
        positions = rng.uniform(-100.0, 100.0, size=(self.n_antennas, 2))  # metres
        i, j = self.baselines[:, 0], self.baselines[:, 1]
        self._uv = positions[j] - positions[i]  # [baseline, 2]
        self._flux = rng.uniform(1.0, 10.0, size=self.n_sources)
        self._phase0 = rng.uniform(0.0, 2 * np.pi, size=self.n_sources)
        self._auto = i == j

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.baselines), self.n_channels, len(POLARIZATIONS))

    def integrate(self, t_start: float, t_int: float) -> np.ndarray:
        """The visibilities of the integration that starts at ``t_start``."""
        t_mid = t_start + t_int / 2.0
        # Sources drift in direction at the sidereal rate (radians per second).
        angle = self._phase0 + 7.2921e-5 * t_mid
        direction = np.stack([np.cos(angle), np.sin(angle)], axis=1) * 0.5  # [src, 2]
        delay = self._uv @ direction.T / 299792458.0  # [baseline, src]
        phase = 2 * np.pi * delay[:, None, :] * self.frequencies[None, :, None]
        sky = (self._flux[None, None, :] * np.exp(-1j * phase)).sum(axis=2)  # [bl, chan]
        vis = np.empty(self.shape, dtype=np.complex64)
        vis[..., 0] = sky
        vis[..., 3] = sky
        vis[..., 1] = 0.05 * sky
        vis[..., 2] = 0.05 * np.conj(sky)
        rng = np.random.default_rng((self.seed, int(round(t_start * 1000))))
        vis += self.noise * (
            rng.standard_normal(self.shape) + 1j * rng.standard_normal(self.shape)
        ).astype(np.complex64)
        vis[self._auto] = np.abs(vis[self._auto])  # autocorrelations are real and positive
        return vis
