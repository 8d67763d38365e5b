"""The forward process of diffusion: how a clean image is drowned in noise, step by step, under a noise schedule.

    from spaces.diffusion import forward
    alpha_bar = forward.alphas_cumprod("cosine")            # ᾱ_t for t = 0 .. 999
    noisy = forward.add_noise(image, t=500, schedule="scaled_linear", seed=0)
    forward.schedule_frame(["linear", "cosine"])            # t, ᾱ_t, log10 SNR per schedule, for a plot

A schedule is the variance β_t of the noise added at each step t. Composing the steps gives a closed form,
which is what training samples from:

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,   ε ~ N(0, I),   ᾱ_t = Π_{s≤t} (1 − β_s)

and the signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) says how much of the image is left. Three schedules:
- "linear": DDPM's β from 1e-4 to 0.02 (Ho et al., 2020), the diffusers default;
- "scaled_linear": Stable Diffusion's, linear in √β from 0.00085 to 0.012 (gentler: latents are not pixels);
- "cosine": ᾱ_t = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal, 2021), β clipped at 0.999; diffusers calls
  it "squaredcos_cap_v2".
The formulas are written out here (numpy) so the page shows what they are; tests check them against diffusers.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES: dict[str, str] = {  # our name -> diffusers' beta_schedule
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
}
TRAIN_STEPS = 1000


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, got {schedule!r}")
    return schedule


def betas(schedule: str, steps: int = TRAIN_STEPS) -> np.ndarray:
    """β_1 .. β_T (index 0 is the first step)."""
    check_schedule(schedule)
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, steps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=np.float64) ** 2

    def alpha_bar(fraction: float, s: float = 0.008) -> float:
        return math.cos((fraction + s) / (1 + s) * math.pi / 2) ** 2

    # β_t = 1 − ᾱ(t)/ᾱ(t−1), capped so the last step does not divide by ~0.
    return np.array([min(1 - alpha_bar((t + 1) / steps) / alpha_bar(t / steps), 0.999) for t in range(steps)])


def alphas_cumprod(schedule: str, steps: int = TRAIN_STEPS) -> np.ndarray:
    """ᾱ_t = Π (1 − β_s): the share of the original signal's variance left after step t."""
    return np.cumprod(1.0 - betas(schedule, steps))


def signal_to_noise(schedule: str, steps: int = TRAIN_STEPS) -> np.ndarray:
    alpha_bar = alphas_cumprod(schedule, steps)
    return alpha_bar / (1.0 - alpha_bar)


def check_timestep(t: int, steps: int = TRAIN_STEPS) -> int:
    if t is None or int(t) != t or not 0 <= t < steps:
        raise ValueError(f"timestep must be a whole number from 0 to {steps - 1}, got {t}")
    return int(t)


def add_noise(image: np.ndarray, t: int, schedule: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x_t, ε): `image` (values in [-1, 1]) after t + 1 forward steps, in closed form, with seeded noise."""
    t = check_timestep(t)
    alpha_bar = alphas_cumprod(schedule)[t]
    noise = np.random.default_rng(seed).standard_normal(image.shape)
    return np.sqrt(alpha_bar) * image + np.sqrt(1.0 - alpha_bar) * noise, noise


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 pixels -> floats in [-1, 1], the range diffusion models work in."""
    return image.astype(np.float64) / 127.5 - 1.0


def to_pixels(image: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> uint8 pixels (values outside are clipped, as a viewer would)."""
    return np.clip((image + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def noise_strip(image: np.ndarray, schedule: str, timesteps: list[int], seed: int = 0) -> list[np.ndarray]:
    """The same photo and the same noise at several timesteps, as uint8 pixels."""
    clean = to_unit_range(image)
    return [to_pixels(add_noise(clean, t, schedule, seed)[0]) for t in timesteps]


def schedule_frame(schedules: list[str], every: int = 5):
    """A long table for a plot: timestep, schedule, ᾱ_t, √ᾱ_t (signal scale) and log10 SNR, every `every` steps."""
    import pandas as pd

    rows = []
    for schedule in schedules:
        alpha_bar = alphas_cumprod(schedule)
        snr = signal_to_noise(schedule)
        for t in range(0, TRAIN_STEPS, every):
            rows.append({"timestep": t, "schedule": schedule, "ᾱ_t": alpha_bar[t], "√ᾱ_t": math.sqrt(alpha_bar[t]),
                         "log10 SNR": math.log10(snr[t])})
    return pd.DataFrame(rows)


def half_signal_step(schedule: str) -> int:
    """The first timestep where noise outweighs signal (SNR < 1): where the photo stops being recognisable."""
    return int(np.argmax(signal_to_noise(schedule) < 1.0))
