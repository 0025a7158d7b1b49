"""Where a benchmark's task instruction comes from: one definition for the training data and the simulator.

The instruction is the key of the T5 embedding cache, so the DataModule and the env must produce the same string
for the same task, character for character.

LIBERO: the benchmark registry (``libero.libero.benchmark``) names each task after its BDDL file and derives
``task.language`` from that name, not from the BDDL's ``(:language ...)`` line:

- ``pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate``
  -> "pick up the black bowl between the plate and the ramekin and place it on the plate"
  (the BDDL's own line, which the original dataset files store in ``problem_info["language_instruction"]``, reads
  "Pick the akita black bowl between the plate and the ramekin and place it on the plate");
- LIBERO-90 / LIBERO-10 names start with the scene in capitals, which is dropped:
  ``KITCHEN_SCENE3_turn_on_the_stove`` -> "turn on the stove".

The demo files are named ``<task name>_demo.hdf5`` and the original ones also record the BDDL path
(``bddl_file_name``), so training derives the same text with :func:`libero_task_name` + :func:`libero_language`;
the LIBERO env calls :func:`libero_language` on ``task.name``. Cosmos Policy's loader parses the file name the same
way for every LIBERO task, so these are also the keys of the official ``t5_embeddings.pkl``.

No third-party import here: the LIBERO env imports this module in ``.venv-libero`` (no torch there).
"""

from __future__ import annotations

import os
import re

_SCENE_PREFIX = re.compile(r"^.*?SCENE\d*_")
_SUFFIXES = (".bddl", ".hdf5", ".h5")


def libero_task_name(path: str) -> str:
    """The LIBERO task name of a BDDL path or a demo file path.

    ``.../libero_spatial/pick_up_the_black_bowl_..._plate.bddl`` and ``.../pick_up_the_black_bowl_..._plate_demo.hdf5``
    both give ``pick_up_the_black_bowl_..._plate``.
    """
    name = os.path.basename(str(path).replace("\\", "/").rstrip("/"))
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith("_demo"):
        name = name[: -len("_demo")]
    return name


def libero_language(task_name: str) -> str:
    """The instruction of a LIBERO task, as the benchmark's ``task.language``: the task name's words, after the
    ``<ROOM>_SCENE<n>_`` prefix of LIBERO-90 / LIBERO-10 names (names that start with a capital letter).

    Accepts a task name or anything :func:`libero_task_name` accepts (a BDDL or demo file path).
    """
    name = libero_task_name(task_name)
    if name[:1].isupper():
        name = _SCENE_PREFIX.sub("", name, count=1)
    return " ".join(word for word in name.split("_") if word)


__all__ = ["libero_language", "libero_task_name"]
