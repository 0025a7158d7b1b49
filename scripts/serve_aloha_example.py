"""Drive gym-aloha TransferCube episodes through a running policy server, as a robot would be driven.

Start a server first (it may run on another machine; then pass --host), then run the episodes:

    python -m cosmos_lit serve ckpt_path=runs/.../last.ckpt port=8000 &
    python scripts/serve_aloha_example.py --port 8000 --seeds 100000 100001 100002

The simulator runs here, the policy there: every observation is sent over the WebSocket in openpi's ALOHA
convention (``images/cam_high`` as (3, H, W) uint8, ``state`` (14,), ``prompt``) and the answer's action chunk is
executed open loop (``OpenLoopChunker``, as many actions as the server returns: its ``execute_steps``), then the next
observation is sent. With ``--client openpi`` the released ``openpi_client.WebsocketClientPolicy`` talks to the
server instead of ours.

Same result as the in-process evaluation: each query carries ``seed = server seed + i`` for the episode's i-th
query (``CosmosPolicyClient(reproducible=True)``), which is the noise an in-process ``CosmosPolicy`` draws after
``reset()`` (``cosmos_lit.eval.rollouts.run_episodes`` resets it for every wave); so with ``num_workers=1`` (one episode
per wave) ``run_episodes`` on the same checkpoint, seeds, image size and horizon gives the same success, reward and
step count per episode. ``--no-reproducible`` lets the server batch the queries with other clients' instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def openpi_observation(obs: dict[str, Any], image_keys: dict[str, str]) -> dict[str, Any]:
    """Our env observation -> openpi's ALOHA request: each camera's image as (3, H, W) uint8 at the server's key for
    it (``images/cam_high`` -> ``request["images"]["cam_high"]``), ``state``, ``prompt``."""
    request: dict[str, Any] = {"images": {}, "state": np.asarray(obs["proprio"]), "prompt": obs["instruction"]}
    for camera, key in image_keys.items():
        chw = np.ascontiguousarray(np.asarray(obs["images"][camera]).transpose(2, 0, 1))
        if key.startswith("images/"):
            request["images"][key[len("images/"):]] = chw
        else:
            request[key] = chw
    return request


class _OpenpiAdapter:
    """``openpi_client.WebsocketClientPolicy`` behind our client's ``infer``/``reset``/``metadata``."""

    def __init__(self, host: str, port: int, reproducible: bool):
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        self._policy = WebsocketClientPolicy(host=host, port=port)
        self.metadata = self._policy.get_server_metadata()
        self.reproducible = reproducible
        self.queries = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self.reproducible:
            obs = {**obs, self.metadata["keys"]["seed"]: int(self.metadata["seed"]) + self.queries}
        self.queries += 1
        return self._policy.infer(obs)

    def reset(self) -> None:
        self._policy.reset()
        self.queries = 0

    def close(self) -> None:
        self._policy._ws.close()


def connect(host: str, port: int, client: str = "cosmos", reproducible: bool = True) -> Any:
    if client == "openpi":
        return _OpenpiAdapter(host, port, reproducible)
    from cosmos_lit.client import CosmosPolicyClient

    return CosmosPolicyClient(host, port, reproducible=reproducible)


def drive_episodes(client: Any, seeds: list[int], task: str = "transfer_cube", max_steps: int = 400,
                   fast_render: bool = True, verbose: bool = True) -> list[Any]:
    """One episode per seed through ``client`` (``infer(obs) -> {"actions": (k, A)}``, ``reset()``, ``metadata``).

    The episode ends at success, when the env says done, or after ``max_steps`` steps (as ``run_episodes`` with
    ``max_steps``). Returns ``cosmos_lit.envs.base.EpisodeResult`` per seed."""
    from cosmos_lit.client import OpenLoopChunker
    from cosmos_lit.envs.aloha import AlohaSimEnv
    from cosmos_lit.envs.base import EpisodeResult

    meta = client.metadata
    spec = meta["spec"]
    cameras = list(spec["cameras"])
    image_keys = {c: meta["keys"]["images"][c][0] for c in cameras}  # the server's first key: openpi's (cam_high)
    env = AlohaSimEnv(task=task, cameras=tuple(cameras), image_size=int(spec["image_size"]), max_steps=max_steps,
                      fast_render=fast_render)
    results = []
    try:
        for seed in seeds:
            t0 = time.monotonic()
            client.reset()
            chunker = OpenLoopChunker()  # execute every action the server returns (its execute_steps)
            obs = env.reset(int(seed))
            steps, total, best, success, done = 0, 0.0, 0.0, False, False
            values: list[float] = []

            def query(obs: dict[str, Any], values: list[float]) -> np.ndarray:
                out = client.infer(openpi_observation(obs, image_keys))
                if "value" in out:
                    values.append(float(out["value"]))
                return out["actions"]

            while not done:
                action = chunker.act(lambda obs=obs, values=values: query(obs, values))
                obs, reward, env_done, info = env.step(np.asarray(action))
                steps += 1
                total += float(reward)
                best = max(best, float(reward))
                success = success or bool(info.get("success", False))
                done = env_done or success or steps >= max_steps
            r = EpisodeResult("aloha_sim", task, int(seed), success, total, best, steps, time.monotonic() - t0,
                              predicted_values=values)
            results.append(r)
            if verbose:
                print(f"seed {seed}: {'success' if success else 'failure'}, reward {total:.1f} (max {best:.0f}), "
                      f"{steps} steps, {r.seconds:.1f} s", flush=True)
    finally:
        env.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seeds", type=int, nargs="+", default=[100000, 100001, 100002])
    p.add_argument("--task", default="transfer_cube", choices=["transfer_cube", "insertion"])
    p.add_argument("--max-steps", type=int, default=400, help="episode horizon (env steps of 0.02 s)")
    p.add_argument("--client", default="cosmos", choices=["cosmos", "openpi"], help="our client or openpi-client's")
    p.add_argument("--no-reproducible", dest="reproducible", action="store_false",
                   help="let the server pick the noise (batched with other clients; not comparable to in-process)")
    p.add_argument("--json", help="write the per-episode results here")
    args = p.parse_args(argv)
    client = connect(args.host, args.port, args.client, args.reproducible)
    try:
        results = drive_episodes(client, args.seeds, args.task, args.max_steps)
    finally:
        client.close()
    rate = float(np.mean([r.success for r in results]))
    print(f"success rate {rate:.2f} over {len(results)} episodes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
