"""Scripted experts for gym-aloha TransferCube / Insertion (demo generation: ``cosmos_lit.datamodules.aloha_sim_demos``).

Method (ACT's recipe, with our own waypoints and two changes noted below):

1. Load the task's *mocap* scene, where each gripper is welded to a mocap body whose pose is the tool-centre point
   (TCP, between the finger tips). Place the objects as gym-aloha does for the seed.
2. Per arm, a table of waypoints ``(t, xyz, quat, gripper)`` built from the object poses; the commands between two
   waypoints are linear interpolations (quaternion normalised, gripper normalised 0 = closed .. 1 = open).
3. Each step writes the commands into ``mocap_pos/quat`` and the finger controls; the arm joints the scene
   reaches, with the gripper entries replaced by the commanded normalised gripper, are the joint targets.
4. The joint targets drive the joint-space env (``AlohaSimEnv``, same seed). Only episodes that reach reward 4
   there become demos; their actions replay open loop to the same result.

Changes to ACT's recipe: (a) the joint-space env runs in lockstep with the mocap scene instead of replaying
afterwards, so later stages are planned from where the objects really are in the env (e.g. where the cube sits
in the right gripper) and the insertion servoes the peg tip onto the socket axis; (b) the joint targets carry an
integral of the env's tracking error (see ``run_expert``). Both make the success rate ~100 % under MuJoCo 3.

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cosmos_lit.envs.aloha import CONTROL_DT, MAX_REWARD, AlohaSimEnv, get_task, load_physics, sample_object_poses
from cosmos_lit.envs.render import ensure_gl_backend

EXPERT_VERSION = 1  # bump when the waypoint tables change: cached demo folders are then regenerated
MEET_POINT = np.array([0.0, 0.5, 0.25])  # where the arms hand over / insert, metres (world frame)
WELD_TORQUESCALE = 3.75
OPEN, CLOSED = 1.0, 0.0
ARMS = ("left", "right")


# -- small geometry helpers ---------------------------------------------------------------------------------------
def quat_about_y(angle: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``angle`` radians about the world y axis."""
    return np.array([np.cos(angle / 2), 0.0, np.sin(angle / 2), 0.0])


def tcp_quat(arm: str, pitch: float) -> np.ndarray:
    """Mocap orientation that points ``arm``'s fingers toward the table centre, tilted ``pitch`` rad downward.

    With the identity mocap orientation the left gripper points along +x and the right along -x (horizontal,
    toward each other); ``pitch = pi/2`` points straight down.
    """
    return quat_about_y(pitch if arm == "left" else -pitch)


@dataclass(frozen=True)
class Waypoint:
    t: int  # env step at which the TCP reaches this pose
    xyz: np.ndarray  # (3,) metres
    quat: np.ndarray  # (4,) w, x, y, z
    gripper: float  # normalised, 0 = closed .. 1 = open


def interpolate(waypoints: list[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear interpolation of xyz / quat / gripper at step ``t`` (held constant outside the table)."""
    if t <= waypoints[0].t:
        w = waypoints[0]
        return w.xyz, w.quat, w.gripper
    for a, b in zip(waypoints[:-1], waypoints[1:]):
        if a.t <= t <= b.t:
            f = 0.0 if b.t == a.t else (t - a.t) / (b.t - a.t)
            quat = (1 - f) * a.quat + f * b.quat
            return (1 - f) * a.xyz + f * b.xyz, quat / np.linalg.norm(quat), (1 - f) * a.gripper + f * b.gripper
    w = waypoints[-1]
    return w.xyz, w.quat, w.gripper


# -- the mocap scene --------------------------------------------------------------------------------------------
class MocapScene:
    """gym-aloha's end-effector scene, driven by TCP poses; reads back joint positions and object poses."""

    def __init__(self, task: str):
        ensure_gl_backend()  # before mujoco is imported
        import mujoco
        from gym_aloha.tasks import sim_end_effector

        self._mujoco = mujoco
        self.task = get_task(task)
        self.physics = load_physics(self.task.mocap_xml)
        m = self.physics.model
        # MuJoCo >= 3 changed weld-constraint scaling (mujoco#1483): the mocap welds became too soft in rotation
        # and the grippers lag ~10 cm behind; a larger torquescale (eq_data[:, 10]) restores a stiff weld.
        m.eq_data[:2, 10] = WELD_TORQUESCALE
        self.n_substeps = int(round(CONTROL_DT / m.opt.timestep))
        self._object_adr = [int(m.jnt_qposadr[m.name2id(j, "joint")]) for j in self.task.object_joints]
        reward_task = {"transfer_cube": "TransferCubeEndEffectorTask", "insertion": "InsertionEndEffectorTask"}
        self._reward_task = getattr(sim_end_effector, reward_task[self.task.name])()
        self._gripper_body = {arm: m.name2id(f"vx300s_{arm}/gripper_link", "body") for arm in ARMS}

    def reset(self, seed: int) -> None:
        from gym_aloha.constants import START_ARM_POSE, normalize_puppet_gripper_position

        p = self.physics
        poses = sample_object_poses(self.task.name, seed).reshape(-1, 7)
        with p.reset_context():
            p.data.qpos[:16] = START_ARM_POSE
            for adr, pose in zip(self._object_adr, poses):
                p.data.qpos[adr : adr + 7] = pose
        for i, arm in enumerate(ARMS):
            xyz, quat = self._weld_consistent_tcp(i, arm)
            p.data.mocap_pos[i], p.data.mocap_quat[i] = xyz, quat
        self.start_gripper = float(normalize_puppet_gripper_position(START_ARM_POSE[6]))
        self._set_grippers(self.start_gripper, self.start_gripper)
        p.forward()

    def _weld_consistent_tcp(self, i: int, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Mocap pose at which weld ``i`` is satisfied by the gripper's current pose (so nothing jumps at t=0)."""
        mj, m, d = self._mujoco, self.physics.model.ptr, self.physics.data.ptr
        b = self._gripper_body[arm]
        inv_pos, inv_quat = np.zeros(3), np.zeros(4)
        mj.mju_negPose(inv_pos, inv_quat, m.eq_data[i, 3:6], m.eq_data[i, 6:10])  # relpose: gripper in mocap frame
        pos, quat = np.zeros(3), np.zeros(4)
        mj.mju_mulPose(pos, quat, d.xpos[b], d.xquat[b], inv_pos, inv_quat)
        return pos, quat

    def _set_grippers(self, left: float, right: float) -> None:
        from gym_aloha.constants import unnormalize_puppet_gripper_position

        ctrl = [unnormalize_puppet_gripper_position(g) for g in (left, right)]
        self.physics.data.ctrl[:] = [ctrl[0], -ctrl[0], ctrl[1], -ctrl[1]]

    def tcp(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Current commanded TCP (mocap) pose of ``arm``: xyz (3,), quat (4,)."""
        i = ARMS.index(arm)
        return self.physics.data.mocap_pos[i].copy(), self.physics.data.mocap_quat[i].copy()

    def object_pose(self, k: int) -> np.ndarray:
        """(7,) xyz + wxyz of the task's ``k``-th object."""
        adr = self._object_adr[k]
        return self.physics.data.qpos[adr : adr + 7].copy()

    def step(self, commands: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
        """Apply TCP commands {arm: (xyz, quat, gripper)} for one env step; return the (14,) action reached."""
        p = self.physics
        for i, arm in enumerate(ARMS):
            p.data.mocap_pos[i], p.data.mocap_quat[i] = commands[arm][0], commands[arm][1]
        self._set_grippers(commands["left"][2], commands["right"][2])
        p.step(self.n_substeps)
        q = p.data.qpos
        return np.concatenate([q[0:6], [commands["left"][2]], q[8:14], [commands["right"][2]]]).astype(np.float32)

    def reward(self) -> float:
        return float(self._reward_task.get_reward(self.physics))

    def close(self) -> None:
        self.physics.free()


# -- the experts ---------------------------------------------------------------------------------------------------
Command = tuple[np.ndarray, np.ndarray, float]  # TCP xyz (3,), quat (4,), normalised gripper


class WaypointExpert:
    """Per-arm waypoint tables, (re)built at the start of each stage; optional per-step TCP corrections.

    ``noise_windows`` (per arm, ``[(t0, t1), ...]`` in steps) are the free-space segments where ``run_expert`` may
    perturb the executed joint targets (``ActionNoise``): the arm holds nothing and grasps nothing in them. (While
    an arm carries an object, a perturbation moves the object in the env's gripper but not in the mocap scene's;
    the later stages, planned from the env, then make the scene's other arm collide with its own object and its
    joint targets go wild.)

    A stage builder sees the mocap scene (commanded TCPs, for continuity) and the joint-space env (where the
    objects really are) and returns new waypoints per arm; they replace the arm's waypoints from their first time.
    """

    stage_starts: tuple[int, ...] = ()

    noise_windows: dict[str, list[tuple[int, int]]] = {}

    def __init__(self, noise_arms: Sequence[str] | str = ARMS) -> None:
        """``noise_arms``: the arms whose ``noise_windows`` are kept (e.g. ``("right",)``: DART noise on one arm)."""
        arms = tuple(a.strip() for a in noise_arms.split(",")) if isinstance(noise_arms, str) else tuple(noise_arms)
        if not set(arms) <= set(ARMS):
            raise ValueError(f"{type(self).__name__}.noise_arms: expected arms among {ARMS}, got {list(arms)}")
        self.noise_arms = [arm for arm in ARMS if arm in arms]  # canonical: ARMS order, no repeats
        self.noise_windows = {arm: spans for arm, spans in type(self).noise_windows.items() if arm in arms}
        self.tables: dict[str, list[Waypoint]] = {arm: [] for arm in ARMS}

    def build_stage(self, k: int, scene: MocapScene, env: AlohaSimEnv) -> dict[str, list[Waypoint]]:
        raise NotImplementedError

    def correction(self, t: int, env: AlohaSimEnv) -> dict[str, np.ndarray]:
        """xyz offsets (3,) added to the arms' commands at step ``t`` (feedback on the real object poses)."""
        return {}

    def commands(self, t: int, scene: MocapScene, env: AlohaSimEnv) -> dict[str, Command]:
        if t in self.stage_starts:
            for arm, wps in self.build_stage(self.stage_starts.index(t), scene, env).items():
                self.tables[arm] = [w for w in self.tables[arm] if w.t < wps[0].t] + wps
        cmds = {arm: interpolate(self.tables[arm], t + 1) for arm in ARMS}
        for arm, offset in self.correction(t, env).items():
            xyz, quat, g = cmds[arm]
            cmds[arm] = (xyz + offset, quat, g)
        return cmds


def _hold(scene: MocapScene, arm: str, t: int, gripper: float) -> Waypoint:
    xyz, quat = scene.tcp(arm)
    return Waypoint(t, xyz, quat, gripper)


def _object_pose(env: AlohaSimEnv, k: int) -> np.ndarray:
    return env.object_state()[7 * k : 7 * k + 7].copy()


class TransferCubeExpert(WaypointExpert):
    """Right arm picks the cube and carries it to the meet point; the left arm takes it; the right lets go.

    Args:
        pick_pitch / take_pitch: right / left gripper tilt below horizontal, radians.
        grasp_offset: right TCP minus cube centre (upper right part of the cube, so its left half stays free).
        take_offset: left TCP minus cube centre at the hand-over.
        left_approach: how the left arm comes to the hand-over. ``"wait"``: it reaches a waiting pose 20 cm left of
            the meet point by step 150, holds it until the right arm has arrived (step 230), then approaches.
            ``"glide"``: it never holds a pose; from step 100 it glides slowly towards the meet point (0.8 mm per
            step) and arrives 8 cm short of it at step 260, so its own pose tells a policy how far the episode has
            come (a held pose gives no such clock: when to leave it must be read off the other arm).
        noise_arms: the arms that DART-style demos perturb (``ActionNoise``; default both).
    """

    stage_starts = (0, 230)
    # right: reach above the cube; left: approach until 10 steps before the take
    noise_windows = {"right": [(0, 80)], "left": [(0, 280)]}
    left_approaches = ("wait", "glide")

    def __init__(
        self,
        pick_pitch: float = np.deg2rad(60),
        take_pitch: float = 0.0,
        grasp_offset: tuple[float, float, float] = (0.012, 0.0, 0.015),
        take_offset: tuple[float, float, float] = (-0.015, 0.0, -0.008),
        left_approach: str = "wait",
        noise_arms: Sequence[str] | str = ARMS,
    ):
        super().__init__(noise_arms)
        if left_approach not in self.left_approaches:
            raise ValueError(f"TransferCubeExpert.left_approach: expected one of {self.left_approaches}, "
                             f"got {left_approach!r}")
        self.pick_pitch, self.take_pitch = pick_pitch, take_pitch
        self.grasp_offset, self.take_offset = np.asarray(grasp_offset), np.asarray(take_offset)
        self.left_approach = left_approach

    def build_stage(self, k: int, scene: MocapScene, env: AlohaSimEnv) -> dict[str, list[Waypoint]]:
        cube = _object_pose(env, 0)[:3]
        if k == 0:  # pick up and carry to the meet point
            cube[2] = 0.02  # resting height: it spawns 3 cm above the table and falls first
            q, g0, grasp = tcp_quat("right", self.pick_pitch), scene.start_gripper, cube + self.grasp_offset
            right = [
                _hold(scene, "right", 0, g0),
                Waypoint(80, grasp + [0, 0, 0.08], q, OPEN),
                Waypoint(120, grasp, q, OPEN),
                Waypoint(140, grasp, q, CLOSED),
                Waypoint(150, grasp, q, CLOSED),
                Waypoint(220, MEET_POINT + self.grasp_offset, q, CLOSED),
            ]
            q_left = tcp_quat("left", self.take_pitch)
            if self.left_approach == "wait":
                wait = MEET_POINT + [-0.2, 0, 0.05]  # left arm waits, open, away from the incoming cube
                left = [_hold(scene, "left", 0, g0), Waypoint(150, wait, q_left, OPEN)]
            else:  # aimed at where the cube should be at the meet point; re-aimed at step 230
                take = MEET_POINT + self.take_offset
                left = [
                    _hold(scene, "left", 0, g0),
                    Waypoint(100, take + [-0.2, 0, 0.05], q_left, OPEN),
                    Waypoint(260, take + [-0.08, 0, 0], q_left, OPEN),
                ]
            return {"left": left, "right": right}
        # hand-over, aimed at where the right gripper really holds the cube
        q, take = tcp_quat("left", self.take_pitch), cube + self.take_offset
        left = [
            _hold(scene, "left", 230, OPEN),
            Waypoint(260, take + [-0.08, 0, 0], q, OPEN),
            Waypoint(290, take, q, OPEN),
            Waypoint(305, take, q, CLOSED),
            Waypoint(340, take, q, CLOSED),
            Waypoint(380, take + [-0.06, 0, 0.02], q, CLOSED),
        ]
        xyz, quat = scene.tcp("right")
        right = [
            Waypoint(230, xyz, quat, CLOSED),
            Waypoint(310, xyz, quat, CLOSED),
            Waypoint(325, xyz, quat, OPEN),
            Waypoint(370, xyz + [0.08, 0, 0.06], quat, OPEN),
        ]
        return {"left": left, "right": right}


class InsertionExpert(WaypointExpert):
    """Right arm picks the peg, left arm the socket; both go to the meet point; the peg slides into the socket.

    While the peg approaches, the right TCP is servoed so that the peg's tip stays on the socket's axis (the peg
    tilts a few degrees in the gripper, which moves its tip by millimetres; the socket leaves 8 mm of play).

    Args:
        pitch: both grippers' tilt below horizontal, radians.
        peg_grasp / socket_grasp: TCP minus object centre (the peg is held right of centre: its left end goes in).
        socket_at: socket centre during the insertion, metres.
        push_to: final x distance of the peg centre from the socket centre (the pin's end is 0.10 away).
        servo_gain: fraction of the tip's off-axis error corrected per step.
    """

    stage_starts = (0, 235)
    noise_windows = {"right": [(0, 90)], "left": [(0, 90)]}  # reach above the objects
    PEG_HALF_LENGTH = 0.06

    def __init__(
        self,
        pitch: float = np.deg2rad(60),
        peg_grasp: tuple[float, float, float] = (0.03, 0.0, 0.008),
        socket_grasp: tuple[float, float, float] = (-0.03, 0.0, 0.012),
        socket_at: tuple[float, float, float] = (-0.1, 0.5, 0.22),
        push_to: float = 0.08,
        servo_gain: float = 0.1,
        noise_arms: Sequence[str] | str = ARMS,
    ):
        super().__init__(noise_arms)
        self.pitch, self.push_to, self.servo_gain = pitch, push_to, servo_gain
        self.peg_grasp, self.socket_grasp, self.socket_at = map(np.asarray, (peg_grasp, socket_grasp, socket_at))
        self._offset = np.zeros(3)

    def build_stage(self, k: int, scene: MocapScene, env: AlohaSimEnv) -> dict[str, list[Waypoint]]:
        peg, socket = _object_pose(env, 0)[:3], _object_pose(env, 1)[:3]
        if k == 0:  # pick both up and carry them to either side of the meet point
            peg[2], socket[2] = 0.01, 0.022  # resting heights
            arms = {}
            for arm, obj, off in (("right", peg, self.peg_grasp), ("left", socket, self.socket_grasp)):
                q = tcp_quat(arm, self.pitch)
                arms[arm] = [
                    _hold(scene, arm, 0, scene.start_gripper),
                    Waypoint(90, obj + off + [0, 0, 0.08], q, OPEN),
                    Waypoint(130, obj + off, q, OPEN),
                    Waypoint(150, obj + off, q, CLOSED),
                    Waypoint(160, obj + off, q, CLOSED),
                ]
            peg_at = self.socket_at + [0.2, 0, 0]  # peg centre 20 cm right of the socket's
            arms["left"].append(Waypoint(220, self.socket_at + self.socket_grasp, tcp_quat("left", self.pitch), CLOSED))
            arms["right"].append(Waypoint(220, peg_at + self.peg_grasp, tcp_quat("right", self.pitch), CLOSED))
            return arms
        # line the peg up with where the socket really is, then push it in
        peg_xyz, peg_q = scene.tcp("right")
        sock_xyz, sock_q = scene.tcp("left")
        peg_in_hand = peg - peg_xyz
        right = [
            Waypoint(235, peg_xyz, peg_q, CLOSED),
            Waypoint(270, socket + [0.14, 0, 0] - peg_in_hand, peg_q, CLOSED),  # tip 2 cm before the mouth
            Waypoint(330, socket + [self.push_to, 0, 0] - peg_in_hand, peg_q, CLOSED),
        ]
        left = [Waypoint(235, sock_xyz, sock_q, CLOSED), Waypoint(330, sock_xyz, sock_q, CLOSED)]
        return {"left": left, "right": right}

    def correction(self, t: int, env: AlohaSimEnv) -> dict[str, np.ndarray]:
        if t < self.stage_starts[1]:
            return {}
        import mujoco

        peg, socket = _object_pose(env, 0), _object_pose(env, 1)
        peg_rot, socket_rot = np.zeros(9), np.zeros(9)
        mujoco.mju_quat2Mat(peg_rot, peg[3:])
        mujoco.mju_quat2Mat(socket_rot, socket[3:])
        socket_rot = socket_rot.reshape(3, 3)
        tip = peg[:3] + peg_rot.reshape(3, 3)[:, 0] * -self.PEG_HALF_LENGTH  # left end of the peg
        tip_in_socket = socket_rot.T @ (tip - socket[:3])
        off_axis = socket_rot @ np.array([0.0, tip_in_socket[1], tip_in_socket[2]])
        self._offset -= self.servo_gain * off_axis
        return {"right": self._offset.copy()}


EXPERTS: dict[str, Callable[..., WaypointExpert]] = {"transfer_cube": TransferCubeExpert, "insertion": InsertionExpert}


def make_expert(task: str, options: dict[str, Any] | None = None) -> WaypointExpert:
    """The task's expert with constructor ``options`` (e.g. ``{"left_approach": "glide"}``), checked by name."""
    import inspect

    cls, options = EXPERTS[get_task(task).name], dict(options or {})
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; it accepts {accepted}")
    return cls(**options)


# -- expert rollout and replay --------------------------------------------------------------------------------------
ARM_JOINTS = np.r_[0:6, 7:13]  # action entries that are arm joints (6 and 13 are the grippers)


ARM_SLICES = {"left": slice(0, 6), "right": slice(7, 13)}


@dataclass(frozen=True)
class ActionNoise:
    """DART-style perturbation of the executed joint targets (Laskey et al., 2017), labels stay the expert's.

    Per arm joint an Ornstein-Uhlenbeck process (stationary std ``std`` rad, correlation time ``steps`` env steps)
    is added to what the env executes, inside the expert's ``noise_windows`` only, tapering to zero over the last
    10 steps of a window. The states drift off the expert's path while the recorded actions are the expert's
    commands from there, so a policy learns to steer back; with clean demos every state lies on one narrow path.
    """

    std: float = 0.0
    steps: float = 25.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.std) and self.std >= 0):
            raise ValueError(f"ActionNoise.std: expected a number >= 0 (radians), got {self.std}")
        if not (np.isfinite(self.steps) and self.steps >= 1):
            raise ValueError(f"ActionNoise.steps: expected a correlation time >= 1 step, got {self.steps}")

    def sample(self, seed: int, episode_len: int, windows: dict[str, list[tuple[int, int]]]) -> np.ndarray:
        """(episode_len, 14) offsets in radians; zero on the grippers and outside the windows. Same seed, same noise."""
        rng = np.random.default_rng([int(seed), 0xDA27])
        a = np.exp(-1.0 / self.steps)
        ou = np.zeros((episode_len, 14))
        x = rng.normal(0.0, self.std, 14)
        for t in range(episode_len):
            ou[t] = x
            x = a * x + np.sqrt(1 - a * a) * rng.normal(0.0, self.std, 14)
        mask = np.zeros((episode_len, 14))
        for arm, spans in windows.items():
            for t0, t1 in spans:
                t = np.arange(max(t0, 0), min(t1, episode_len))
                mask[t, ARM_SLICES[arm]] = np.clip((t1 - t) / 10.0, 0.0, 1.0)[:, None]
        return ou * mask


@dataclass
class ExpertEpisode:
    """What the expert did in the joint-space env for one seed (T steps)."""

    task: str
    seed: int
    actions: np.ndarray  # (T, 14) float32 the expert's joint targets (the labels)
    rewards: np.ndarray  # (T,) float32 reward after each action
    qpos: np.ndarray  # (T, 14) float32 joint positions observed before each action
    qvel: np.ndarray  # (T, 14) float32
    images: dict[str, np.ndarray]  # {camera: (T, S, S, 3) uint8} observed before each action; empty if not rendered
    executed: np.ndarray | None = None  # (T, 14) float32 what AlohaSimEnv.step received, if it differs (ActionNoise)

    @property
    def success(self) -> bool:
        return bool(self.rewards.max() >= MAX_REWARD)


def run_expert(
    task: str,
    seed: int,
    episode_len: int = 400,
    *,
    scene: MocapScene | None = None,
    env: AlohaSimEnv | None = None,
    expert: WaypointExpert | None = None,
    render: bool = False,
    integral_gain: float = 0.2,
    noise: ActionNoise | None = None,
) -> ExpertEpisode:
    """Run the scripted expert and the joint-space env side by side; record what the env saw and did.

    Every step the mocap scene moves the TCPs as the expert commands and yields the joint positions q* that reach
    them (the scene is the inverse kinematics); the env receives ``q*`` plus an integral of its past tracking error
    on the arm joints. The arms' position servos have large joint friction (the wrist's deadband is ~0.6 rad) and
    no gravity compensation, so sending plain ``q*`` lands centimetres off; the integral term removes that
    steady-state error. Without ``noise`` the recorded actions are exactly what the env executed, so an open-loop
    replay of them from ``env.reset(seed)`` reproduces the episode (MuJoCo is deterministic; rendering does not
    touch physics). With ``noise`` the env executes ``action + offset`` (``ExpertEpisode.executed`` replays it);
    the integral then tracks ``q* + offset``, so it keeps compensating friction only and the label stays
    ``q* + integral``, the command that takes the arm back to the expert's path.

    Args:
        render: also record the images of ``env.cameras`` (else the physics runs alone).
        noise: DART-style perturbation of the executed targets (``None`` or std 0: none).
    """
    own_scene, own_env = scene is None, env is None
    scene = scene or MocapScene(task)
    env = env or AlohaSimEnv(task=task, max_steps=episode_len)
    expert = expert or make_expert(task)
    T, S = episode_len, env.image_size
    try:
        scene.reset(seed)
        obs = env.reset(seed) if render else env.reset_scene(seed)
        actions, rewards = np.zeros((T, 14), np.float32), np.zeros(T, np.float32)
        qpos, qvel = np.zeros((T, 14), np.float32), np.zeros((T, 14), np.float32)
        images = {c: np.zeros((T, S, S, 3), np.uint8) for c in env.cameras} if render else {}
        noisy = noise is not None and noise.std > 0
        offsets = noise.sample(seed, T, expert.noise_windows) if noisy else np.zeros((T, 14))
        executed = np.zeros((T, 14), np.float32)
        integral = np.zeros(14)
        for t in range(T):
            qpos[t], qvel[t] = env.joint_positions(), env.joint_velocities()
            target = scene.step(expert.commands(t, scene, env)).astype(np.float64)
            actions[t] = target + integral
            executed[t] = target + integral + offsets[t]
            if render:
                for c in env.cameras:
                    images[c][t] = obs["images"][c]
                obs, rewards[t], _, _ = env.step(executed[t])
            else:
                rewards[t] = env.step_physics(executed[t])
            error = target + offsets[t] - env.joint_positions()
            integral[ARM_JOINTS] = np.clip(integral[ARM_JOINTS] + integral_gain * error[ARM_JOINTS], -0.5, 0.5)
        return ExpertEpisode(task, seed, actions, rewards, qpos, qvel, images, executed if noisy else None)
    finally:
        if own_scene:
            scene.close()
        if own_env:
            env.close()


def replay(env: AlohaSimEnv, seed: int, actions: np.ndarray) -> np.ndarray:
    """Step ``actions`` (T, 14) open loop from ``env.reset(seed)`` (rendering as the env does); return rewards (T,)."""
    env.reset(seed)
    return np.array([env.step(a)[1] for a in actions], np.float32)
