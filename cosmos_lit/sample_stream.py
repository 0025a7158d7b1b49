"""The training sample stream: one global sequence of samples, cut into global batches, sharded per rank.

Training draws from an endless stream of seeded permutations of the dataset: position ``p`` of the stream is
sample ``perm_{p // N}[p % N]`` (``perm_k = default_rng([seed, k]).permutation(N)``). Optimizer step ``s`` consumes
positions ``[s·G, (s+1)·G)`` with G = per-device batch × ranks × gradient accumulation, and rank r takes its
contiguous slice of each global batch. Each sample carries its position as a key (``sample_key``) from which the
dataset and the task derive its randomness (sample type, augmentation, σ, noise). Hence:

- the global batch of step s, and every random number drawn for it, do not depend on the number of ranks: one
  process with batch 8 and two with batch 4 train on the same samples with the same noise (DDP averages the
  gradients of equal shards, which is the mean over the global batch);
- the stream is a function of the step alone: a run resumed from a checkpoint at step s (``ckpt_path=last``)
  draws exactly the samples, and the noise, that the uninterrupted run drew after step s.

An "epoch" is ``ceil(samples_per_epoch / G)`` steps (``samples_per_epoch`` defaults to N); it only paces
Lightning's epoch-end hooks, the stream runs on across epochs without a seam. The dataset side is
``EpisodeDataset.__getitem__((index, key))``; the task side ``CosmosPolicyTask._sample_generators``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DistributedSampler


class GlobalBatchStream(DistributedSampler):
    """Sampler of ``(dataset index, stream position)`` pairs for one rank (see the module docstring).

    A ``DistributedSampler`` subclass so that Lightning leaves it in place under DDP/FSDP instead of injecting its
    own; wrap it in a ``DataLoader`` with ``batch_size=batch_size`` and ``drop_last=True``.

    Args:
        num_samples: N, the dataset length.
        batch_size: b, samples per rank per forward.
        seed: seed of the permutations.
        rank, world_size: this process's rank and the number of ranks.
        accumulate: gradient-accumulation factor (forwards per optimizer step).
        samples_per_epoch: epoch length in samples (default N).
        start_batch: callable giving the number of per-rank forwards already trained (optimizer steps ×
            ``accumulate``), read each time iteration starts; the stream resumes there.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1, samples_per_epoch: int | None = None,
                 start_batch: Callable[[], int] | None = None):
        if num_samples <= 0:
            raise ValueError("GlobalBatchStream: the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"GlobalBatchStream: rank {rank} outside [0, {world_size})")
        # no super().__init__: it asks torch.distributed for the world, which this class is given
        self.dataset_size = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.num_replicas = int(world_size)
        self.accumulate = max(1, int(accumulate))
        self.samples_per_epoch = int(samples_per_epoch or num_samples)
        self.start_batch = start_batch or (lambda: 0)
        self.epoch = 0
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        """G: samples per forward over all ranks (b × world size)."""
        return self.batch_size * self.num_replicas

    @property
    def batches_per_epoch(self) -> int:
        """Forwards per rank per epoch (a whole number of optimizer steps)."""
        steps = math.ceil(self.samples_per_epoch / (self.global_batch * self.accumulate))
        return max(1, steps) * self.accumulate

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch; the stream's place comes from ``start_batch``, not from the epoch."""
        self.epoch = epoch

    def index_at(self, position: int) -> int:
        """The dataset index at stream ``position``."""
        k, offset = divmod(int(position), self.dataset_size)
        if self._perm is None or self._perm[0] != k:
            self._perm = (k, np.random.default_rng([self.seed, k]).permutation(self.dataset_size))
        return int(self._perm[1][offset])

    def positions(self, batch: int) -> range:
        """Stream positions of this rank's share of per-rank forward number ``batch``."""
        first = batch * self.global_batch + self.rank * self.batch_size
        return range(first, first + self.batch_size)

    def head(self, n: int) -> list[tuple[int, int]]:
        """The stream's first ``n`` (index, position) pairs (at most one permutation): the same on every rank."""
        return [(self.index_at(p), p) for p in range(min(int(n), self.dataset_size))]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = int(self.start_batch())
        end = (start // self.batches_per_epoch + 1) * self.batches_per_epoch  # the end of the epoch holding start
        for batch in range(start, end):
            for p in self.positions(batch):
                yield self.index_at(p), p
