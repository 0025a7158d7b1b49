"""Write scripted-expert ALOHA sim demos (ACT-format HDF5) into a folder; reuses the folder if it already matches.

    python scripts/make_aloha_demos.py data/aloha_transfer_cube --task transfer_cube --episodes 20 --size 224
"""

from __future__ import annotations

import argparse

from cosmos_lit.datamodules.aloha_sim_demos import generate_demos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--task", default="transfer_cube", choices=["transfer_cube", "insertion"])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="square image side, pixels")
    p.add_argument("--cameras", nargs="+", default=["top"])
    p.add_argument("--slow-render", action="store_true", help="keep shadows, reflections and MSAA")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--episode-len", type=int, default=400)
    p.add_argument("--compression", choices=["lzf", "gzip"], default=None)
    p.add_argument("--noise-std", type=float, default=0.0, help="DART-style perturbation of executed joints, rad")
    p.add_argument("--noise-steps", type=float, default=25.0, help="its correlation time, env steps")
    p.add_argument("--expert", nargs="*", default=[], metavar="KEY=VALUE",
                   help="scripted-expert options, e.g. left_approach=glide (TransferCube)")
    a = p.parse_args()
    bad = [kv for kv in a.expert if "=" not in kv]
    if bad:
        p.error(f"--expert: expected KEY=VALUE (e.g. left_approach=glide), got {bad[0]!r}")
    options = dict(kv.split("=", 1) for kv in a.expert)
    try:
        generate_demos(
            a.out_dir, a.task, a.episodes, a.seed0, a.size, a.cameras, not a.slow_render, a.workers,
            episode_len=a.episode_len, compression=a.compression, noise_std=a.noise_std, noise_steps=a.noise_steps,
            expert_options=options,
        )
    except ValueError as e:  # bad parameters or expert options, or too few successful seeds: one line, no traceback
        raise SystemExit(f"make_aloha_demos.py: {e}") from None


if __name__ == "__main__":  # required: the worker processes are spawned
    main()
