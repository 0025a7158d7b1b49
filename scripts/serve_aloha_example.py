"""Drive gym-aloha TransferCube episodes through a running policy server, as a robot would be driven.

Start a server first (it may run on another machine; then pass --host), then run the episodes:

    python -m cosmos_lit serve ckpt_path=runs/.../last.ckpt port=8000 &
    python scripts/serve_aloha_example.py --port 8000 --seeds 100000 100001 100002
    python -m cosmos_lit serve ckpt_path=runs/.../last.ckpt front=official_http &      # POST /act on 8777
    python scripts/serve_aloha_example.py --client official --port 8777

The simulator runs here, the policy there. With the WebSocket clients (``--client cosmos``: ours, ``--client
openpi``: the released ``openpi_client.WebsocketClientPolicy``) every observation is sent in openpi's ALOHA convention
(``images/cam_high`` as (3, H, W) uint8, ``state`` (14,), ``prompt``); with ``--client official`` it is POSTed to
``/act`` in the official Cosmos Policy request format (json-numpy body: ``primary_image`` (H, W, 3) uint8,
``proprio``, ``task_description``: what NVIDIA's run_aloha_eval.py sends). The answer's action chunk is executed open
loop (``OpenLoopChunker``, as many actions as the server returns: its ``execute_steps``), then the next observation is
sent.

Same result as the in-process evaluation: the episode's i-th query carries ``seed = episode_seed(server seed, env
seed, i)`` (``cosmos_lit.seeding``; ``CosmosPolicyClient(reproducible=True)`` after ``reset(episode=env seed)``), the
noise ``cosmos_lit.eval.rollouts.run_episodes`` draws for that episode; so ``run_episodes`` on the same checkpoint,
seeds, image size and horizon gives the same success, reward and step count per episode. ``--no-reproducible`` lets the server batch the queries with other clients' instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from cosmos_lit.seeding import episode_seed


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


class _WebSocketClient:
    """Our ``CosmosPolicyClient`` or openpi's ``WebsocketClientPolicy``, sent openpi-convention requests."""

    def __init__(self, host: str, port: int, client: str, reproducible: bool, api_key: str | None = None):
        if client == "openpi":
            from openpi_client.websocket_client_policy import WebsocketClientPolicy

            self._policy: Any = WebsocketClientPolicy(host=host, port=port, api_key=api_key)
            self.metadata = self._policy.get_server_metadata()
        else:
            from cosmos_lit.client import CosmosPolicyClient

            self._policy = CosmosPolicyClient(host, port, api_key=api_key)
            self.metadata = self._policy.metadata
        self.client = client
        self.reproducible = reproducible
        self.episode, self.queries = 0, 0
        cameras = list(self.metadata["spec"]["cameras"])
        self._image_keys = {c: self.metadata["keys"]["images"][c][0] for c in cameras}  # the server's first: openpi's

    def act(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One query: ``{"actions": (k, A), "value": float (when the server sends one)}``."""
        request = openpi_observation(obs, self._image_keys)
        if self.reproducible:
            request[self.metadata["keys"]["seed"]] = episode_seed(int(self.metadata["seed"]), self.episode, self.queries)
        self.queries += 1
        out = self._policy.infer(request)
        return {"actions": np.asarray(out["actions"]), **({"value": float(out["value"])} if "value" in out else {})}

    def reset(self, episode: int = 0) -> None:
        self._policy.reset()  # this wrapper sends the seeds itself
        self.episode, self.queries = int(episode), 0

    def close(self) -> None:
        if self.client == "openpi":
            self._policy._ws.close()
        else:
            self._policy.close()


class OfficialHttpClient:
    """``POST /act`` in the official Cosmos Policy request format: a json-numpy JSON body of ``primary_image`` (H, W, 3)
    uint8 (and the other cameras' keys of the server's ``GET /metadata`` ``http_keys``), ``proprio``,
    ``task_description``; the answer's ``actions`` is a list of (A,) arrays, ``value_prediction`` a float."""

    def __init__(self, host: str, port: int, reproducible: bool, api_key: str | None = None, timeout_s: float = 120.0):
        self.base = f"http://{host}:{port}"
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.timeout_s = timeout_s
        self.metadata = self._call("GET", "/metadata")
        self.reproducible = reproducible
        self.episode, self.queries = 0, 0

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.request

        import json_numpy

        data = None if body is None else json_numpy.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=self.headers, method=method)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json_numpy.loads(resp.read())

    def act(self, obs: dict[str, Any]) -> dict[str, Any]:
        keys = self.metadata["http_keys"]
        request: dict[str, Any] = {keys["images"][c]: np.asarray(obs["images"][c], np.uint8) for c in keys["images"]}
        request[keys["proprio"]] = np.asarray(obs["proprio"], np.float32)
        request[keys["instruction"]] = obs["instruction"]
        if self.reproducible:
            request["seed"] = episode_seed(int(self.metadata["seed"]), self.episode, self.queries)
        self.queries += 1
        out = self._call("POST", "/act", request)
        value = out.get("value_prediction")
        return {"actions": np.stack(out["actions"]), **({"value": float(value)} if value is not None else {})}

    def reset(self, episode: int = 0) -> None:
        self.episode, self.queries = int(episode), 0

    def close(self) -> None:
        pass


def connect(host: str, port: int, client: str = "cosmos", reproducible: bool = True, api_key: str | None = None) -> Any:
    """A client with ``metadata``, ``act(env_obs) -> {"actions", "value"}``, ``reset()``, ``close()``."""
    if client == "official":
        return OfficialHttpClient(host, port, reproducible, api_key=api_key)
    return _WebSocketClient(host, port, client, reproducible, api_key=api_key)


def drive_episodes(client: Any, seeds: list[int], task: str = "transfer_cube", max_steps: int = 400,
                   fast_render: bool = True, verbose: bool = True) -> list[Any]:
    """One episode per seed through ``client`` (``act(env_obs) -> {"actions": (k, A)}``, ``reset()``, ``metadata``).

    The episode ends at success, when the env says done, or after ``max_steps`` steps (as ``run_episodes`` with
    ``max_steps``). Returns ``cosmos_lit.envs.base.EpisodeResult`` per seed."""
    from cosmos_lit.client import OpenLoopChunker
    from cosmos_lit.envs.aloha import AlohaSimEnv
    from cosmos_lit.envs.base import EpisodeResult

    meta = client.metadata
    spec = meta["spec"]
    cameras = list(spec["cameras"])
    env = AlohaSimEnv(task=task, cameras=tuple(cameras), image_size=int(spec["image_size"]), max_steps=max_steps,
                      fast_render=fast_render)
    results = []
    try:
        for seed in seeds:
            t0 = time.monotonic()
            client.reset(episode=int(seed))
            chunker = OpenLoopChunker()  # execute every action the server returns (its execute_steps)
            obs = env.reset(int(seed))
            steps, total, best, success, done = 0, 0.0, 0.0, False, False
            values: list[float] = []

            def query(obs: dict[str, Any], values: list[float]) -> np.ndarray:
                out = client.act(obs)
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
    p.add_argument("--client", default="cosmos", choices=["cosmos", "openpi", "official"],
                   help="our WebSocket client, openpi-client's, or POST /act in the official format")
    p.add_argument("--api-key-file", help="a file holding the server's API key")
    p.add_argument("--no-reproducible", dest="reproducible", action="store_false",
                   help="let the server pick the noise (batched with other clients; not comparable to in-process)")
    p.add_argument("--json", help="write the per-episode results here")
    args = p.parse_args(argv)
    api_key = open(args.api_key_file).read().strip() if args.api_key_file else None
    client = connect(args.host, args.port, args.client, args.reproducible, api_key=api_key)
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
