"""Does a policy find the object in the image, or extrapolate from proprio? (figures in docs/aloha_sim_experiments.md).

Every scripted ALOHA-sim TransferCube episode starts from the same arm pose; only the cube's position differs. At
frame 0 the image is therefore the only cue to where the right arm must go; a few frames later the arm's own motion
(proprio) gives it away as well. For each frame T this queries the policy on the demonstrations' observation at T and
compares the predicted right-arm joint targets at chunk step K-1 with the demonstrated ones across episodes:

- ``corr``: correlation across episodes, per joint (1 = follows the cube; about 0 = the same reach for every cube);
- ``rms / std``: prediction error over the across-episode spread of the demonstrations (1.0 = no better than the
  average reach);
- the same with the images rolled by one episode (each episode sees the next episode's cube): a policy that reads the
  image follows the *wrong* cube there (``corr`` drops), one that extrapolates proprio does not notice.

    python research/aloha_sim/diagnose_grounding.py runs/<run>/checkpoints/last.ckpt \\
        data/aloha_sim/transfer_cube_100_112 --episodes 80-99 --frames 0,10,30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

from cosmos_lit.policy import CosmosPolicy

RIGHT_ARM = slice(7, 13)  # the six right-arm joints (the gripper is left out)
JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def episode_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    ids = list(range(int(lo), int(hi or lo) + 1))
    if len(ids) < 3:
        raise SystemExit(f"error: --episodes {text}: expected a range of at least 3 episodes, e.g. 80-99")
    return ids


def load(data_dir: Path, ids: list[int], camera: str, frame: int, horizon: int) -> dict[str, list]:
    out: dict[str, list] = {"image": [], "qpos": [], "target": [], "instruction": []}
    for i in ids:
        path = data_dir / f"episode_{i}.hdf5"
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found (expected ACT-format episode_<i>.hdf5 files)")
        with h5py.File(path, "r") as f:
            out["image"].append(f[f"observations/images/{camera}"][frame])
            out["qpos"].append(f["observations/qpos"][frame])
            out["target"].append(f["action"][frame + horizon - 1, RIGHT_ARM])
            out["instruction"].append(str(f.attrs.get("instruction", "")))
    return out


def score(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint correlation and RMS error / across-episode std; pred, target (N, 6)."""
    corr = np.array([np.corrcoef(pred[:, j], target[:, j])[0, 1] for j in range(target.shape[1])])
    return corr, np.sqrt(((pred - target) ** 2).mean(0)) / (target.std(0) + 1e-8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--episodes", default="80-99", help="episode ids, lo-hi inclusive")
    p.add_argument("--frames", default="0,10,30", help="observation frames T to query at")
    p.add_argument("--camera", default="top")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    a = p.parse_args()
    policy = CosmosPolicy.from_checkpoint(a.ckpt, num_steps=a.steps)
    k = policy.spec.chunk_size
    ids = episode_range(a.episodes)
    np.set_printoptions(precision=2, suppress=True)
    print(f"right-arm joint targets at chunk step {k - 1}, {len(ids)} episodes; joints: {', '.join(JOINTS)}")
    for frame in (int(t) for t in a.frames.split(",")):
        d = load(a.data_dir, ids, a.camera, frame, k)
        target = np.stack(d["target"])
        for name, images in (("own image", d["image"]), ("next episode's image", d["image"][1:] + d["image"][:1])):
            obs = [{"images": {a.camera: im}, "proprio": q, "instruction": s}
                   for im, q, s in zip(images, d["qpos"], d["instruction"])]
            policy.reset()
            pred = policy(obs)["actions"][:, k - 1, RIGHT_ARM]
            corr, ratio = score(pred, target)
            print(f"T={frame:3d} {name:22s} corr {corr}  rms/std {ratio}  (mean corr {corr.mean():.2f})")


if __name__ == "__main__":
    main()
