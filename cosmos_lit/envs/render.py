"""Offscreen rendering of a MuJoCo scene at a small square size, optionally in "fast" mode.

On a CPU (Mesa llvmpipe) the cost of a frame is the 4096² shadow map, the reflection pass and 4× MSAA, not the
pixel count. ``fast=True`` switches all three off (about 36 ms -> 4 ms per 224² frame of the ALOHA scene). This
changes the image statistics, so use it only when the training frames were rendered the same way (our own ALOHA
demos are: ``cosmos_lit.envs.aloha_expert`` renders through this class too).

``mujoco`` is imported inside the constructor so that this module imports without it.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any

import numpy as np

_set_after_mujoco_import = False
_live_renderers: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_live_renderers() -> None:
    for r in list(_live_renderers):
        try:
            r.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def ensure_gl_backend(default: str = "egl") -> str:
    """Set ``MUJOCO_GL`` (if unset) before mujoco / dm_control are imported; return the value in effect.

    mujoco chooses its OpenGL backend when it is first imported, so setting the variable later has no effect.
    """
    global _set_after_mujoco_import
    if "MUJOCO_GL" not in os.environ and "mujoco" in sys.modules:
        _set_after_mujoco_import = True
    return os.environ.setdefault("MUJOCO_GL", default)


class CameraRenderer:
    """Renders named cameras of one ``mujoco.MjModel``/``MjData`` pair to (size, size, 3) uint8 images.

    Args:
        model: a ``mujoco.MjModel`` (for dm_control physics pass ``physics.model.ptr``).
        data: the matching ``mujoco.MjData`` (``physics.data.ptr``).
        size: square image side in pixels.
        fast: shadows, reflections and multisampling off.
    """

    def __init__(self, model: Any, data: Any, size: int, fast: bool = True):
        ensure_gl_backend()
        import mujoco

        if size < 1:
            raise ValueError(f"render size must be a positive number of pixels, got {size}")
        self._mujoco = mujoco
        self.model = model
        self.data = data
        self.size = int(size)
        self.fast = bool(fast)
        # The offscreen buffer must be at least as large as the image.
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.size)
        if self.fast:
            model.vis.quality.offsamples = 0  # read when the GL context is made, so set it first
        try:
            self._renderer = mujoco.Renderer(model, self.size, self.size)
        except Exception as e:  # mujoco.FatalError and GL errors
            hint = (
                "mujoco was imported before MUJOCO_GL was set: export MUJOCO_GL=egl (or osmesa) before starting Python"
                if _set_after_mujoco_import
                else "check that EGL/OSMesa libraries are installed (apt: libegl1 libgl1-mesa-dri libosmesa6)"
            )
            backend = os.environ.get("MUJOCO_GL")
            raise RuntimeError(f"cannot create an offscreen OpenGL context (MUJOCO_GL={backend}): {e}; {hint}") from e
        self.camera_names = tuple(model.camera(i).name for i in range(model.ncam))
        _live_renderers.add(self)
        global _exit_hook_registered
        if not _exit_hook_registered:
            # Registered after mujoco's GL module, so it runs first at exit (atexit is LIFO) and frees our contexts
            # while EGL is still up; otherwise Renderer.__del__ prints EGLError tracebacks at interpreter exit.
            atexit.register(_close_live_renderers)
            _exit_hook_registered = True

    def check_cameras(self, cameras: tuple[str, ...] | list[str]) -> None:
        """Raise ValueError naming any camera the model does not have."""
        missing = [c for c in cameras if c not in self.camera_names]
        if missing:
            raise ValueError(f"unknown camera(s) {missing}; this scene has {list(self.camera_names)}")

    def render(self, camera: str) -> np.ndarray:
        """Image of ``camera`` for the current ``data`` state: (size, size, 3) uint8, upright."""
        r = self._renderer
        r.update_scene(self.data, camera=camera)
        if self.fast:
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return r.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
