"""Shared test settings. Imports nothing heavy: tests/test_libero_env.py runs in .venv-libero, which has no torch."""

import os

# Headless MuJoCo rendering: choose the GL backend before any test imports mujoco / robosuite / dm_control.
os.environ.setdefault("MUJOCO_GL", "egl")
