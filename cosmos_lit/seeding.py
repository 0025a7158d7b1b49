"""Noise seeds of evaluation queries (shared by the in-process evaluation and the reproducible clients)."""

from __future__ import annotations

EPISODE_STRIDE = 1_000_003  # a prime above any episode's query count: (episode, query) pairs never collide
SEED_RANGE = 1 << 31


def episode_seed(policy_seed: int, episode: int, query: int) -> int:
    """The noise seed of the ``query``-th action chunk (from 0) of the episode with env seed ``episode``:
    ``(policy_seed + EPISODE_STRIDE · episode + query) mod 2³¹``.

    Each episode gets its own noise whatever batch it runs in and whichever rank runs it, so an evaluation gives the
    same results on 1 or many ranks and with any number of env workers; a planner adds small offsets (candidate,
    future, value) to it, as the official code does to its seed."""
    return (int(policy_seed) + EPISODE_STRIDE * int(episode) + int(query)) % SEED_RANGE
