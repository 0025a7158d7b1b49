"""Does a policy's first action chunk depend on where the object is? (figures in docs/aloha_sim_experiments.md).

At an ALOHA-sim episode's first step the robot is in the same home pose in every episode: only the camera images
say where the cube is, so the first chunk must be read off the images. For each demonstration episode this resets
the env to the episode's seed, queries the policy once and compares the right arm's joint targets at chunk steps
``--at`` with the demonstration's:

- policy L1: mean |policy - demo| over the right arm's six joints, radians;
- mean-of-demos L1: the same for a constant guess, the mean of the demonstrations (a policy blind to the images);
- slope: least-squares slope of the policy's deviation from its own mean on the demonstrations' deviation from
  theirs (1: it follows where the cube is, 0: it ignores it).

    python research/aloha_sim/diagnose_first_chunk.py runs/<run>/checkpoints/last.ckpt \\
        data/aloha_sim/transfer_cube_100_112 --episodes 0-19
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

from cosmos_lit.envs.aloha import AlohaSimEnv
from cosmos_lit.policy import CosmosPolicy

RIGHT_ARM = slice(7, 13)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--episodes", default="0-19", help="episode ids, lo-hi inclusive")
    p.add_argument("--at", type=int, nargs="+", default=[24, 49], help="chunk steps to compare")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    a = p.parse_args()
    lo, _, hi = a.episodes.partition("-")
    seeds, actions = [], []
    for i in range(int(lo), int(hi or lo) + 1):
        path = a.data_dir / f"episode_{i}.hdf5"
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found (expected ACT-format episode_<i>.hdf5 files)")
        with h5py.File(path, "r") as f:
            seeds.append(int(f.attrs["seed"]))
            actions.append(f["action"][:])
    if len(seeds) < 2:
        raise SystemExit("error: --episodes: need at least two episodes (slopes compare episodes)")
    policy = CosmosPolicy.from_checkpoint(a.ckpt, num_steps=a.steps)
    if max(a.at) >= policy.spec.chunk_size or min(a.at) < 0:
        raise SystemExit(f"error: --at {a.at}: expected chunk steps in 0..{policy.spec.chunk_size - 1}")
    envs = [AlohaSimEnv("transfer_cube", policy.spec.cameras, policy.spec.image_size, len(actions[0])) for _ in seeds]
    try:
        obs = [env.reset(seed) for env, seed in zip(envs, seeds)]
        policy.reset()
        chunk = policy(obs)["actions"]  # (B, K, 14), radians
    finally:
        for env in envs:
            env.close()
    demo = np.stack(actions)
    print(f"{len(seeds)} episodes from their first step, right arm joint targets (rad):")
    for k in a.at:
        ours, theirs = chunk[:, k, RIGHT_ARM], demo[:, k, RIGHT_ARM]
        x, y = theirs - theirs.mean(0), ours - ours.mean(0)
        print(f"  chunk step {k:2d}: policy L1 {np.abs(ours - theirs).mean():.3f}, mean-of-demos L1 "
              f"{np.abs(x).mean():.3f}, slope {(x * y).sum() / (x * x).sum():.2f}")


if __name__ == "__main__":
    main()
