import math

import torch

from cosmos_lit import diffusion


def test_rectified_flow_identities():
    sigma = torch.tensor([0.5, 1.0, 4.0, 80.0])
    p = diffusion.rectified_flow_scaling(sigma)
    t = sigma / (1 + sigma)
    assert torch.allclose(p.c_noise, t) and torch.allclose(p.c_in, 1 - t) and torch.allclose(p.c_skip, 1 - t)
    assert torch.allclose(p.c_out, -t)
    # net input c_in·(x0 + σε) is the RF interpolant (1−t)x0 + tε
    x0, eps = torch.randn(4), torch.randn(4)
    assert torch.allclose(p.c_in * (x0 + sigma * eps), (1 - t) * x0 + t * eps, atol=1e-5)
    # a perfect velocity F = ε − x0 gives D = x0
    d = p.c_skip * (x0 + sigma * eps) + p.c_out * (eps - x0)
    assert torch.allclose(d, x0, atol=1e-4)
    # weighted x0 loss equals the velocity loss
    f = torch.randn(4)
    d = p.c_skip * (x0 + sigma * eps) + p.c_out * f
    assert torch.allclose(diffusion.loss_weight(sigma) * (d - x0) ** 2, (f - (eps - x0)) ** 2, rtol=1e-4, atol=1e-4)


def test_sigma_distribution_hybrid_times_sqrt_frames():
    g = torch.Generator().manual_seed(0)
    s = diffusion.HybridSigmaSampler()(200_000, 9, generator=g) / 3.0
    # 30% uniform on [1, 85] → 85 > σ/3 ≥ 1 for those; median of the mixture near the official ~21/3
    assert 6.0 < s.median().item() < 8.0
    frac_uniform_range = ((s >= 1) & (s <= 85)).float().mean().item()
    assert frac_uniform_range > 0.8
    no_adjust = diffusion.HybridSigmaSampler(adjust_video_noise=False, p_lognormal=1.0)(100_000, 9, generator=g)
    assert abs(no_adjust.log().mean().item() - math.log(4.0)) < 0.02
    assert abs(no_adjust.log().std().item() - 1.2) < 0.02


def test_karras_grid_official_values():
    grid = diffusion.karras_sigmas(4, 80.0, 4.0)
    assert [round(x, 2) for x in grid.tolist()] == [80.0, 42.29, 20.97, 9.62, 4.0]


def _toy_velocity(x0_target):
    """Velocity of the ideal denoiser for a delta data distribution at x0_target: F = (x_in − x0)/t ... in RF form."""
    def fn(net_in, timesteps, cond_mask):
        t = timesteps[:, None, :, None, None]
        # net_in = (1−t)·x0 + t·ε on generated frames → ε = (net_in − (1−t)x0)/t, F = ε − x0
        eps = (net_in - (1 - t) * x0_target) / t.clamp_min(1e-8)
        return torch.where(t > 0, eps - x0_target, torch.zeros_like(net_in))
    return fn


def test_conditioning_frames_unchanged_and_ideal_denoiser_recovers_target():
    b, c, t, h, w = 2, 3, 5, 2, 2
    target = torch.randn(b, c, t, h, w)
    cond = torch.randn(b, c, t, h, w)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    for solver in ("2ab", "euler"):
        for n in (1, 2, 5):
            out = diffusion.sample(_toy_velocity(target), cond, mask, num_steps=n, solver=solver,
                                   generator=torch.Generator().manual_seed(0))
            m = mask[:, None, :, None, None].bool().expand_as(out)
            assert torch.equal(out[m], cond[m])  # conditioning frames bit-exact
            assert torch.allclose(out[~m], target[~m], atol=1e-4)


def _linear_velocity(a: float):
    """Toy network F = a·net_in (no time dependence): makes every solver step easy to hand-compute."""
    return lambda net_in, timesteps, cond_mask: a * net_in


def test_sampler_matches_hand_computed_reference():
    a = 0.3
    eps = torch.randn(1, 1, 1, 1, 1)
    x0c = torch.zeros_like(eps)
    mask = torch.zeros(1, 1)

    def D(x, s):  # x̂0 = (1−t)x − t·a·(1−t)x with t = s/(1+s)
        t = s / (1 + s)
        return (1 - t) * x - t * a * (1 - t) * x

    sig = diffusion.karras_sigmas(4, 80, 4).tolist()
    # reference "2ab": first x0-Euler step, then exponential AB2 with φ functions, then a final D at σ_min
    x = eps * 80.0
    prev = None
    for s, t in zip(sig[:-1], sig[1:]):
        d = D(x, s)
        if prev is None:
            x = (t / s) * x + (1 - t / s) * d
        else:
            h = math.log(s) - math.log(t)
            c2 = (-math.log(prev[0]) + math.log(s)) / h
            phi1 = (math.exp(-h) - 1) / (-h)
            phi2 = (phi1 - 1) / (-h)
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * d + (phi2 / c2) * prev[1])
        prev = (s, d)
    ref = D(x, 4.0)
    out = diffusion.sample(_linear_velocity(a), x0c, mask, num_steps=5, solver="2ab", noise=eps)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Euler: every step first-order
    x = eps * 80.0
    for s, t in zip(sig[:-1], sig[1:]):
        x = (t / s) * x + (1 - t / s) * D(x, s)
    out = diffusion.sample(_linear_velocity(a), x0c, mask, num_steps=5, solver="euler", noise=eps)
    assert torch.allclose(out, D(x, 4.0), rtol=1e-5, atol=1e-6)
    # one step: a single evaluation at σ_max
    out = diffusion.sample(_linear_velocity(a), x0c, mask, num_steps=1, noise=eps)
    assert torch.allclose(out, D(eps * 80.0, 80.0), rtol=1e-5)


def test_loss_zero_on_conditioning_frames_and_counts_them():
    x0 = torch.randn(2, 4, 3, 2, 2)
    noise = torch.randn_like(x0)
    mask = torch.tensor([[1.0, 0, 0], [1.0, 1, 0]])
    sigma = torch.tensor([2.0, 5.0])
    # ideal velocity: loss exactly 0
    ideal = lambda net_in, ts, m: torch.where(ts[:, None, :, None, None] > 0, noise - x0, torch.zeros_like(x0))
    loss, _ = diffusion.diffusion_loss(ideal, x0, mask, sigma, noise)
    assert loss.item() < 1e-8
    zero = lambda net_in, ts, m: torch.zeros_like(net_in)
    loss, _ = diffusion.diffusion_loss(zero, x0, mask, sigma, noise)
    # velocity error is (ε − x0) on generated frames; mean over all B·C·T·H·W elements, × 10
    gen = (1 - mask)[:, None, :, None, None].expand_as(x0)
    expect = 10 * ((noise - x0) ** 2 * gen).sum() / x0.numel()
    assert torch.allclose(loss, expect, rtol=1e-4)


def test_two_steps_is_the_single_evaluation_case_as_the_official_sampler_counts():
    """The official sampler decrements the requested count first: 2 steps == 1 step == D(σ_max·ε, σ_max); n >= 3 is
    n evaluations (n − 1 solver steps + the final clean D at σ_min)."""
    calls = []

    def counting(net_in, timesteps, cond_mask):
        calls.append(timesteps.clone())
        return 0.3 * net_in

    eps = torch.randn(2, 3, 4, 2, 2)
    x0c = torch.randn_like(eps)
    mask = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]])
    one = diffusion.sample(counting, x0c, mask, num_steps=1, noise=eps)
    two = diffusion.sample(counting, x0c, mask, num_steps=2, noise=eps)
    assert torch.equal(one, two)
    for n, expected in ((1, 1), (2, 1), (3, 3), (5, 5)):
        calls.clear()
        diffusion.sample(counting, x0c, mask, num_steps=n, noise=eps)
        assert len(calls) == expected == diffusion.network_evaluations(n)
    # 1 and 2 steps: the one evaluation is at σ_max (t = 80/81 on generated frames)
    calls.clear()
    diffusion.sample(counting, x0c, mask, num_steps=2, noise=eps)
    assert torch.allclose(calls[0][0, 1:], torch.full((3,), 80 / 81))
    # 3 steps: two solver steps on the grid 80 -> 4 (80, 17.89, 4), then D at σ_min = 4
    calls.clear()
    diffusion.sample(counting, x0c, mask, num_steps=3, noise=eps)
    sig = [t[0, -1].item() / (1 - t[0, -1].item()) for t in calls]
    assert [round(s, 2) for s in sig] == [round(s, 2) for s in diffusion.karras_sigmas(2).tolist()[:2]] + [4.0]
    # the non-official count gives 2 steps its own meaning: one solver step + the final D
    calls.clear()
    diffusion.sample(counting, x0c, mask, num_steps=2, noise=eps, official_step_count=False)
    assert len(calls) == 2 == diffusion.network_evaluations(2, official_step_count=False)
