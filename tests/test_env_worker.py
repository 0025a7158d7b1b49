"""EnvPool: envs in worker processes, parallel steps, errors reported per slot without hanging."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from cosmos_lit.envs.worker import EnvPool, WorkerError, decode, encode

DEBUG_ENV = "cosmos_lit.envs.debug_env.DebugEnv"


def test_wire_format_round_trips_numpy_without_pickling_numpy_types():
    import pickle

    msg = ("ok", ({"images": {"top": np.arange(24, dtype=np.uint8).reshape(2, 4, 3)}, "proprio": np.ones(3, ">f4")},
                  np.float64(1.5), np.bool_(True), {"success": np.bool_(False), "list": [np.int64(2), "x"]}))
    wire = encode(msg)
    assert b"numpy" not in pickle.dumps(wire, protocol=4)  # readable by any numpy version on the other side
    back = decode(wire)
    obs, reward, done, info = back[1]
    np.testing.assert_array_equal(obs["images"]["top"], msg[1][0]["images"]["top"])
    assert obs["proprio"].dtype == np.dtype(">f4") and reward == 1.5 and done is True
    assert info == {"success": False, "list": [2, "x"]}


def test_worker_entry_point_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "import cosmos_lit.envs.worker, cosmos_lit.envs.debug_env\n"
        "import cosmos_lit.envs.aloha, cosmos_lit.envs.aloha_expert\n"
        "assert 'mujoco' not in sys.modules and 'dm_control' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pool_steps_envs_and_reports_a_raising_slot():
    with EnvPool({"_target_": DEBUG_ENV, "success_at": 2}, 2, python_executable=sys.executable, timeout_s=20) as pool:
        assert [s["action_dim"] for s in pool.specs] == [14, 14]
        assert pool.specs[0]["pid"] != pool.specs[1]["pid"]
        obs = pool.reset([7, 9])
        assert [int(o["images"]["top"][0, 0, 0]) for o in obs] == [7, 9]
        out = pool.step([np.zeros(14), np.zeros(3)])  # slot 1 gets a bad action: its env raises
        assert out[0][3] == {"success": False}
        assert isinstance(out[1], WorkerError) and out[1].slot == 1 and "ValueError" in out[1].message
        out = pool.step([np.zeros(14), None])  # slot 1 skipped; slot 0 goes on and succeeds
        assert out[1] is None and out[0][2] is True and out[0][3]["success"] is True
        assert pool.alive(1)  # a Python exception does not kill the worker
        assert pool.step([None, np.zeros(14)])[1][0]["proprio"][0] == 1
        assert [f.shape for f in pool.render()] == [(16, 16, 3)] * 2
        with pytest.raises(ValueError, match="expected 2 actions"):
            pool.step([np.zeros(14)])


@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_pool_reports_crashed_or_hung_worker_without_hanging(fault):
    cfg = {"_target_": DEBUG_ENV, "fault": fault, "fault_at_step": 1}
    with EnvPool(cfg, 2, timeout_s=3) as pool:
        pool.reset([0, 1])
        assert all(not isinstance(r, WorkerError) for r in pool.step([np.zeros(14)] * 2))  # step 0 is fine
        start = time.monotonic()
        out = pool.step([np.zeros(14), None])  # slot 0 crashes / hangs at its second step
        assert time.monotonic() - start < 10
        assert isinstance(out[0], WorkerError) and out[1] is None
        assert ("exited (code 3)" if fault == "exit" else "no reply to 'step' within 3 s") in out[0].message
        assert not pool.alive(0) and pool.alive(1)
        assert isinstance(pool.reset([0, None])[0], WorkerError)  # a dead slot stays an error, at once
        assert pool.reset([None, 5])[1]["images"]["top"][0, 0, 0] == 5
        assert pool.restart(0)["action_dim"] == 14
        assert pool.reset([3, None])[0]["images"]["top"][0, 0, 0] == 3


def test_pool_reports_build_errors_and_bad_interpreter():
    with EnvPool({"name": "no_such_env"}, 1) as pool:
        assert isinstance(pool.specs[0], WorkerError) and "unknown env 'no_such_env'" in pool.specs[0].message
        assert isinstance(pool.reset([0])[0], WorkerError)
    with pytest.raises(FileNotFoundError, match="python_executable"):
        EnvPool({"_target_": DEBUG_ENV}, 1, python_executable="/nonexistent/python")


@pytest.mark.sim
def test_pool_runs_two_aloha_envs_in_parallel():
    pytest.importorskip("gym_aloha")
    cfg = {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 32, "max_steps": 50}
    with EnvPool(cfg, 2, timeout_s=60) as pool:
        assert [s["cameras"] for s in pool.specs] == [["top"], ["top"]]
        obs = pool.reset([0, 1])
        assert [o["images"]["top"].shape for o in obs] == [(32, 32, 3)] * 2
        assert obs[0]["proprio"].shape == (14,) and obs[0]["proprio"].dtype == np.float32
        assert not np.array_equal(obs[0]["images"]["top"], obs[1]["images"]["top"])  # cube placed per seed
        hold = [o["proprio"] for o in obs]
        for _ in range(3):
            out = pool.step(hold)
        assert all(isinstance(r[1], float) and r[3]["success"] is False for r in out)
        out = pool.step([hold[0], np.zeros(5)])  # the adapter rejects a wrong action shape in slot 1 only
        assert not isinstance(out[0], WorkerError)
        assert isinstance(out[1], WorkerError) and "shape (14,)" in out[1].message
        assert [f.shape for f in pool.render()] == [(32, 32, 3)] * 2
