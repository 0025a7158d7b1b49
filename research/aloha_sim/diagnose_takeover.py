"""Can a policy finish an ALOHA-sim episode from a demonstration's state? (figures in docs/aloha_sim_experiments.md).

For each demonstration episode this replays the recorded actions open loop from ``reset(seed)`` up to step T (the
scene is then exactly the demonstration's), hands control to the policy for the rest of the episode and reports
the reward it reaches. With T = 0 this is the plain closed-loop evaluation on the demo seeds; with T = 230 the
TransferCube cube is already in the right gripper at the meet point, so the result isolates the hand-over. It also
prints the left arm's mean shoulder / elbow / wrist-angle joint positions (radians) and gripper opening under the
policy next to the demonstrations' joint targets at the same step.

    python research/aloha_sim/diagnose_takeover.py runs/<run>/checkpoints/last.ckpt \\
        data/aloha_sim/transfer_cube_100_112 --episodes 80-99 --from-step 230 --execute-steps 10

Demos with ``/executed_action`` (DART-style, ``data.demo_noise_std``) are replayed with what the env really ran.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

from cosmos_lit.envs.aloha import AlohaSimEnv
from cosmos_lit.policy import CosmosPolicy

LEFT = [1, 2, 4, 6]  # shoulder, elbow, wrist angle, gripper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--episodes", default="80-99", help="episode ids, lo-hi inclusive")
    p.add_argument("--from-step", type=int, default=230, help="step T at which the policy takes over")
    p.add_argument("--execute-steps", type=int, default=10, help="actions executed per policy query")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    a = p.parse_args()
    lo, _, hi = a.episodes.partition("-")
    ids = list(range(int(lo), int(hi or lo) + 1))
    demos = []
    for i in ids:
        path = a.data_dir / f"episode_{i}.hdf5"
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found (expected ACT-format episode_<i>.hdf5 files)")
        with h5py.File(path, "r") as f:
            ran = f["executed_action"][:] if "executed_action" in f else f["action"][:]
            demos.append((int(f.attrs["seed"]), f["action"][:], ran, str(f.attrs.get("task", "transfer_cube"))))
    horizon = len(demos[0][1])
    if not 0 <= a.from_step < horizon:
        raise SystemExit(f"error: --from-step {a.from_step}: expected 0..{horizon - 1}")
    policy = CosmosPolicy.from_checkpoint(a.ckpt, num_steps=a.steps, execute_steps=a.execute_steps)
    envs = [AlohaSimEnv(task, policy.spec.cameras, policy.spec.image_size, horizon) for _, _, _, task in demos]
    try:
        obs = [env.reset(seed) for env, (seed, _, _, _) in zip(envs, demos)]
        before = np.zeros(len(ids))
        for t in range(a.from_step):
            for i, (env, (_, _, ran, _)) in enumerate(zip(envs, demos)):
                obs[i], r, _, _ = env.step(ran[t])
                before[i] = max(before[i], r)
        best, trace, t = np.zeros(len(ids)), [], a.from_step
        policy.reset()
        while t < horizon:
            chunk = policy(obs)["actions"]
            for k in range(min(policy.execute_steps, horizon - t)):
                for i, env in enumerate(envs):
                    obs[i], r, _, _ = env.step(chunk[i, k])
                    best[i] = max(best[i], r)
                trace.append(np.stack([o["proprio"] for o in obs]))
                t += 1
    finally:
        for env in envs:
            env.close()
    counts = np.bincount(best.astype(int), minlength=5)
    print(f"{len(ids)} episodes, policy from step {a.from_step}, {policy.execute_steps} actions per query: "
          f"max reward before the take-over {before.mean():.2f}; after it: success {counts[4]}/{len(ids)}, "
          f"mean max reward {best.mean():.2f}, episodes per max reward 0..4: {counts.tolist()}")
    np.set_printoptions(precision=2, suppress=True)
    targets = np.stack([d[1] for d in demos])
    for s in range(0, horizon - a.from_step, 20):
        print(f"step {a.from_step + s:3d}  left shoulder/elbow/wrist/gripper: policy {trace[s][:, LEFT].mean(0)}  "
              f"demo targets {targets[:, a.from_step + s, LEFT].mean(0)}")


if __name__ == "__main__":
    main()
