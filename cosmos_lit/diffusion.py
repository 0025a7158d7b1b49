"""Rectified flow in EDM σ-space, as Cosmos-Predict2 and Cosmos Policy train and sample it.

Conventions (docs/method.md#diffusion-objective, docs/method.md#sampler):
    x_σ = x0 + σ·ε,  t = σ / (1 + σ)
    c_in = c_skip = 1 − t,  c_out = −t,  c_noise = t        (sigma_data = 1)
    D(x_σ, σ) = c_skip·x_σ + c_out·F(c_in·x_σ, c_noise)       (F regresses the velocity ε − x0)
    loss = 10 · mean_{B,C,T,H,W}[ (1+σ)²/σ² · (D − x0)² ]     (conditioning frames: D := x0, so zero, still counted)

Shapes: latents are (B, C, T, H, W); σ is (B,) per sample, expanded to per-frame (B, T) with 0 on conditioning frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LOSS_SCALE = 10.0

# Network call: (net_input (B,C,T,H,W), timesteps (B,T), condition mask (B,T)) -> F (B,C,T,H,W)
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Preconditioning:
    """Coefficients of the rectified-flow scaling for a σ tensor of any shape."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def rectified_flow_scaling(sigma: torch.Tensor) -> Preconditioning:
    t = sigma / (1.0 + sigma)
    return Preconditioning(c_skip=1.0 - t, c_out=-t, c_in=1.0 - t, c_noise=t)


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """w(σ) = (1+σ)²/σ²; makes the x0 loss equal to the velocity loss ‖F − (ε − x0)‖²."""
    return (1.0 + sigma) ** 2 / sigma**2


@dataclass
class HybridSigmaSampler:
    """Training σ: with prob. ``p_lognormal`` ln σ ~ N(p_mean, p_std²), else σ ~ U[u_min, u_max]; then × √T.

    Defaults are Cosmos Policy's (``HybridEDMSDE``, 0.7 / N(ln 4, 1.2) / U[1, 85]); ``adjust_video_noise`` multiplies
    by √(latent frames) as the inherited Cosmos-Predict2 config does.
    """

    p_mean: float = math.log(4.0)
    p_std: float = 1.2
    p_lognormal: float = 0.7
    u_min: float = 1.0
    u_max: float = 85.0
    adjust_video_noise: bool = True

    def __call__(self, batch: int, num_frames: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        normal = torch.randn(batch, generator=generator, device=device)
        uniform = torch.rand(batch, generator=generator, device=device)
        pick = torch.rand(batch, generator=generator, device=device)
        log_normal = torch.exp(self.p_mean + self.p_std * normal)
        flat = self.u_min + (self.u_max - self.u_min) * uniform
        sigma = torch.where(pick < self.p_lognormal, log_normal, flat)
        if self.adjust_video_noise:
            sigma = sigma * math.sqrt(num_frames)
        return sigma


def per_frame(x: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, 1, T, 1, 1) for broadcasting against latents."""
    return x[:, None, :, None, None]


def denoise(
    velocity_fn: VelocityFn,
    x_sigma: torch.Tensor,
    sigma: torch.Tensor,
    x0_cond: torch.Tensor,
    cond_mask: torch.Tensor,
) -> torch.Tensor:
    """D(x_σ): the x0 prediction with conditioning frames replaced by ground truth.

    Args:
        velocity_fn: the backbone (net input, per-frame timesteps, condition mask) -> velocity.
        x_sigma: (B, C, T, H, W) noisy latents.
        sigma: (B,) noise level of the sample.
        x0_cond: (B, C, T, H, W) clean latents; only read where ``cond_mask`` is 1.
        cond_mask: (B, T) 1 on clean conditioning frames.

    Returns:
        (B, C, T, H, W) x̂0.
    """
    m = per_frame(cond_mask).to(x_sigma.dtype)
    sigma_bt = sigma[:, None].expand_as(cond_mask) * (1.0 - cond_mask)  # σ = 0 on conditioning frames
    pre = rectified_flow_scaling(per_frame(sigma_bt))
    net_in = m * x0_cond + (1.0 - m) * pre.c_in * x_sigma
    timesteps = rectified_flow_scaling(sigma_bt).c_noise  # (B, T), t = 0 where conditioning
    f = velocity_fn(net_in, timesteps, cond_mask)
    x0_hat = pre.c_skip * x_sigma + pre.c_out * f.to(x_sigma.dtype)
    return m * x0_cond + (1.0 - m) * x0_hat


def diffusion_loss(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    cond_mask: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosmos Policy training loss.

    Args:
        x0: (B, C, T, H, W) clean latents with injected vectors.
        cond_mask: (B, T) conditioning frames.
        sigma: (B,) noise levels (already × √T).
        noise: (B, C, T, H, W) standard normal.
        loss_mask: (B, T) optional per-frame weights (defaults to 1 everywhere; conditioning frames are zero anyway).

    Returns:
        (scalar loss, x̂0 detached).
    """
    x_sigma = x0 + per_frame(sigma[:, None].expand(-1, x0.shape[2])) * noise
    x0_hat = denoise(velocity_fn, x_sigma, sigma, x0, cond_mask)
    w = loss_weight(sigma)[:, None, None, None, None]
    err = w * (x0_hat.float() - x0.float()) ** 2
    if loss_mask is not None:
        err = err * per_frame(loss_mask).float()
    return LOSS_SCALE * err.mean(), x0_hat.detach()


def karras_sigmas(num_steps: int, sigma_max: float = 80.0, sigma_min: float = 4.0, rho: float = 7.0) -> torch.Tensor:
    """EDM/Karras grid σ_i, i = 0..num_steps, from sigma_max down to sigma_min (float64)."""
    i = torch.arange(num_steps + 1, dtype=torch.float64)
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + i / num_steps * (b - a)) ** rho


def _phi1(x: torch.Tensor) -> torch.Tensor:
    return torch.expm1(x) / x


def _phi2(x: torch.Tensor) -> torch.Tensor:
    return (_phi1(x) - 1.0) / x


def euler_x0_step(x: torch.Tensor, s: float, t: float, x0: torch.Tensor) -> torch.Tensor:
    """First-order step of the probability-flow ODE in x0 form: x_t = (t/s)·x_s + (1 − t/s)·x̂0."""
    return (t / s) * x + (1.0 - t / s) * x0


def ab2_x0_step(x: torch.Tensor, s: float, t: float, x0: torch.Tensor, s_prev: float, x0_prev: torch.Tensor) -> torch.Tensor:
    """Second-order exponential Adams–Bashforth step (RES multistep, arXiv 2308.02157) in x0 form.

    Works in λ = −ln σ: h = λ_t − λ_s, c = (λ_prev − λ_s)/h (< 0, the previous point lies behind),
    x_t = e^{−h}·x_s + h·[(φ1(−h) − φ2(−h)/c)·x̂0_s + (φ2(−h)/c)·x̂0_prev].
    """
    lam_s, lam_t, lam_p = -math.log(s), -math.log(t), -math.log(s_prev)
    h = torch.tensor(lam_t - lam_s, dtype=torch.float64)
    c = (lam_p - lam_s) / (lam_t - lam_s)
    p1, p2 = _phi1(-h).item(), _phi2(-h).item()
    b1 = p1 - p2 / c
    b2 = p2 / c
    return math.exp(-h.item()) * x + h.item() * (b1 * x0 + b2 * x0_prev)


def network_evaluations(num_steps: int, official_step_count: bool = True) -> int:
    """How many network evaluations ``sample(num_steps=...)`` makes: 1 for n = 1, and for n = 2 with the official
    step count (the single-evaluation case); n otherwise."""
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
    return 1 if num_steps == 1 or (num_steps == 2 and official_step_count) else int(num_steps)


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    x0_cond: torch.Tensor,
    cond_mask: torch.Tensor,
    num_steps: int = 5,
    sigma_max: float = 80.0,
    sigma_min: float = 4.0,
    solver: str = "2ab",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    official_step_count: bool = True,
) -> torch.Tensor:
    """Sample the non-conditioning frames; conditioning frames come back exactly as given.

    Step count, as the official sampler (``sample_clean=True``) counts it: the official code decrements the requested
    count before it picks its branch, so

    - ``num_steps`` 1 **and 2**: a single evaluation x̂0 = D(σ_max·ε, σ_max) (2 steps is exactly 1 step);
    - ``num_steps`` n >= 3: n − 1 solver steps on the Karras grid from ``sigma_max`` to ``sigma_min`` (first step
      x0-Euler, then 2nd-order AB for "2ab", or Euler throughout for "euler"), then one final clean
      x̂0 = D(x, σ_min): n network evaluations in all.

    ``official_step_count=False`` gives 2 steps its own meaning (one solver step + the final D: 2 evaluations);
    every other count is the same either way. ``network_evaluations`` tells the count for a request.

    Args:
        x0_cond: (B, C, T, H, W) latents holding the conditioning frames (other frames are ignored).
        cond_mask: (B, T).
        noise: optional (B, C, T, H, W) standard normal (drawn from ``generator`` otherwise).

    Returns:
        (B, C, T, H, W) sampled clean latents.
    """
    if solver not in ("2ab", "euler"):
        raise ValueError(f"solver: expected '2ab' or 'euler', got '{solver}'")
    evaluations = network_evaluations(num_steps, official_step_count)
    b = x0_cond.shape[0]
    if noise is None:
        noise = torch.randn(x0_cond.shape, generator=generator, device=x0_cond.device, dtype=torch.float32)
    x = noise.to(x0_cond.dtype) * sigma_max

    def d(x_: torch.Tensor, s: float) -> torch.Tensor:
        return denoise(velocity_fn, x_, torch.full((b,), s, device=x_.device, dtype=x_.dtype), x0_cond, cond_mask)

    if evaluations == 1:
        return d(x, sigma_max)
    grid = karras_sigmas(evaluations - 1, sigma_max, sigma_min).tolist()
    prev: tuple[float, torch.Tensor] | None = None
    for s, t in zip(grid[:-1], grid[1:]):
        x0_hat = d(x, s)
        if solver == "2ab" and prev is not None:
            x = ab2_x0_step(x, s, t, x0_hat, prev[0], prev[1])
        else:
            x = euler_x0_step(x, s, t, x0_hat)
        prev = (s, x0_hat)
    return d(x, sigma_min)
