"""Write a small real checkpoint of the checkout it runs in, and the actions its policy returns for fixed inputs.

The test suite keeps such a file from an older version of the code (tests/data/checkpoint_v0.ckpt, made at commit
8d7df7d, before the model object existed) to prove that checkpoints written then still load and act the same::

    python scripts/make_checkpoint_fixture.py --out tests/data/checkpoint_v0.ckpt

It runs ``python -m cosmos_lit fit`` on the embedded ALOHA-sim default at toy size (2 scripted demos, a 1-block
DiT, an EMA of the backbone, 4 steps, no simulator evaluation) in a temporary folder, copies ``last.ckpt`` to
``--out`` and writes ``<out stem>_expected.json``: the policy's action chunk for the observations of
``fixture_observations()`` (seeded random images and proprio), with 2 denoising steps and sampling seed 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 2


def fixture_observations() -> list[dict]:
    """Two ALOHA-sim observations (64² top camera, 14-dim proprio) from a fixed random generator."""
    rng = np.random.default_rng(7)
    return [{"images": {"top": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
             "proprio": rng.uniform(-1, 1, 14).astype(np.float32), "instruction": "transfer the cube"} for _ in range(2)]


def expected_actions(ckpt: Path) -> list:
    sys.path.insert(0, str(ROOT))  # this checkout's code, even where another one is installed
    from cosmos_lit.policy import CosmosPolicy

    policy = CosmosPolicy.from_checkpoint(str(ckpt), num_steps=NUM_STEPS)
    return policy(fixture_observations())["actions"].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write, e.g. tests/data/checkpoint_v0.ckpt")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cosmos_lit", "fit", "--config", str(ROOT / "configs" / "aloha_sim.yaml"),
               f"data.data_dir={tmp}/demos", "data.num_demos=2", "data.batch_size=4", "trainer.max_steps=4",
               "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "eval=none", "logger=none",
               "model.backbone.num_layers=1", "task.ema_decay=0.9", f"run_dir={run}"]
        subprocess.run(cmd, check=True, cwd=ROOT)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "checkpoints" / "last.ckpt", args.out)
    expected = {"num_steps": NUM_STEPS, "seed": 0, "actions": expected_actions(args.out)}
    args.out.with_name(f"{args.out.stem}_expected.json").write_text(json.dumps(expected))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) and its expected actions")


if __name__ == "__main__":
    main()
