"""One seed for a whole training run: model initialisation, data sampling and augmentation.

nnU-Net 2.8.1 keeps training non-deterministic on purpose: its background workers are a
``NonDetMultiThreadedAugmenter`` with ``seeds=None`` (batches arrive in whichever order the workers
finish), nothing seeds Python, NumPy or torch, and ``run_training`` turns on ``cudnn.benchmark``. A
benchmark that compares arms *paired* (same labeled cases, same data stream, same initial weights
where the networks share them) needs all of that fixed by one number.

**The seed.** The environment variable ``nnUNet_mgcl_seed`` (:data:`SEED_ENV`), else the plans key
``configurations[CFG]["mgcl"]["seed"]`` (:data:`SEED_KEY`), else none: without a seed, training is
exactly nnU-Net's (nothing here runs). The variable wins so that replicates of a benchmark can vary
the seed without a plans copy per replicate.

**What it fixes** (:class:`~nnunet_mgcl.trainers.base.SeededTrainingMixin` applies it):

- Python's ``random``, NumPy's global generator and torch's CPU and CUDA generators, set from the
  seed before the network is built (same seed, same initial weights) and set again right after it
  (:func:`seed_everything`), so that an extra head (a classifier, projection heads) does not shift
  what follows (after the network is built, rank k of a DDP run uses seed + k).
- Every data loader gets **its own stream** (:class:`SeededLoader`): Python / NumPy / torch states
  derived from ``(seed, stream index, worker id)``, swapped in around each batch and swapped out again.
  Stream 0 is the training loader, 1 the validation loader, 2 and up any further loader in the order
  a trainer builds it (MMGL's unlabeled loader is stream 2); under DDP, rank k's streams are offset
  by 1000 k, so that ranks draw different batches. A loader's draws therefore do not depend
  on what the training step, the network or another loader consumed: the training batches of the
  nnU-Net arm and of the multi-task arm are the same batches (same cases, crops and augmentation)
  for the same seed, and co-training's unlabeled loader does not move the labeled stream.
- Background workers: nnU-Net's ``NonDetMultiThreadedAugmenter`` is replaced by
  :class:`SeededAugmenter` (batchgenerators' ``MultiThreadedAugmenter``, which returns the workers'
  batches round-robin: a fixed order) with the same number of processes; worker ``k`` re-keys its
  loader's stream to ``(seed, stream, k)``. In-process loading (``nnUNet_n_proc_DA=0``) keeps
  nnU-Net's ``SingleThreadedAugmenter`` around the seeded loader.
- On CUDA: ``cudnn.benchmark`` off and ``cudnn.deterministic`` on (nnU-Net's ``run_training`` turns
  benchmark on before training; the mixin turns it off again in ``on_train_start``).

**What stays non-deterministic** (our reading; measure before relying on it):

- On GPUs, kernels that accumulate with atomics (``index_add`` / ``scatter_add`` backward, used by
  gathers such as the fine-grained loss' anchor features, trilinear interpolation backward, some
  reductions) give run-to-run differences of rounding size that grow over training. We do not call
  ``torch.use_deterministic_algorithms(True)``: several of nnU-Net's and our ops have no deterministic
  CUDA implementation and would raise. ``torch.compile`` (nnU-Net's default on CUDA) may pick other
  kernels per run. Same seed on a GPU means the same data stream and initial weights, close but not
  bit-identical losses.
- The stream of a worker depends on the number of workers (``nnUNet_n_proc_DA``, default the CPU
  count capped at 12): the same seed on two machines with different worker counts gives different
  (equally valid) streams. CPU runs with the same thread count are bit-identical (tested).
- nnU-Net's final validation and prediction are deterministic already (no randomness in sliding-window
  inference); the cross-validation split is nnU-Net's fixed seed 12345 and our split's own seed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import zlib
from typing import Any, Iterator, Mapping

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
# bound at import: while seeded_augmenters() is open, the module's own name is our stand-in
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter as _SINGLE_THREADED

from nnunet_mgcl.settings import mgcl_block

logger = logging.getLogger(__name__)

SEED_ENV = "nnUNet_mgcl_seed"
SEED_KEY = "seed"
_MAX_SEED = 2**32 - 1


def _check_seed(value: Any, source: str) -> int:
    try:
        seed = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed <= _MAX_SEED or (isinstance(value, float) and value != seed):
        raise ValueError(f"{source}: a seed must be an integer in [0, 2**32 - 1], got {value!r}")
    return seed


def training_seed(configuration: Mapping[str, Any] | None = None) -> int | None:
    """The run's seed: ``$nnUNet_mgcl_seed``, else the plans key ``mgcl.seed`` of ``configuration``
    (a plans configuration dict), else None (unseeded, nnU-Net's behaviour). Raises ``ValueError``
    naming the source on a value that is not a non-negative 32-bit integer."""
    env = os.environ.get(SEED_ENV, "").strip()
    if env:
        return _check_seed(env, f"environment variable {SEED_ENV}")
    if configuration is not None:
        value = mgcl_block(configuration).get(SEED_KEY)
        if value is not None:
            return _check_seed(value, f"plans setting mgcl.{SEED_KEY}")
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def stream_seed(seed: int, stream: int | str, worker: int = 0) -> np.random.SeedSequence:
    """The seed sequence of one loader stream of one worker; a string stream is hashed (CRC-32)."""
    key = zlib.crc32(stream.encode()) if isinstance(stream, str) else int(stream)
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(key, int(worker)))


class RNGState:
    """Python, NumPy (global) and torch (CPU) generator states, captured or derived from a seed."""

    def __init__(self, py: tuple, np_state: tuple, torch_state: Any):
        self.py, self.np_state, self.torch_state = py, np_state, torch_state

    @classmethod
    def capture(cls) -> "RNGState":
        import torch

        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state())

    @classmethod
    def from_seed_sequence(cls, ss: np.random.SeedSequence) -> "RNGState":
        import torch

        a, b, c = (int(x) for x in ss.generate_state(3, dtype=np.uint32))
        py = random.Random(a).getstate()
        np_state = np.random.RandomState(b).get_state()
        torch_state = torch.Generator().manual_seed(c).get_state()
        return cls(py, np_state, torch_state)

    def restore(self) -> None:
        import torch

        random.setstate(self.py)
        np.random.set_state(self.np_state)
        torch.set_rng_state(self.torch_state)


@contextlib.contextmanager
def own_rng(state_holder: "SeededLoader") -> Iterator[None]:
    """Run a block with the holder's generator states in place of the global ones; the block's draws
    advance the holder's states, and the global states are as they were afterwards."""
    outer = RNGState.capture()
    state_holder.state.restore()
    try:
        yield
    finally:
        state_holder.state = RNGState.capture()
        outer.restore()


class SeededLoader:
    """A batchgenerators data loader whose every batch is drawn from its own stream.

    Wraps any object with ``__next__`` (nnU-Net's ``nnUNetDataLoader``, our two-view and unlabeled
    loaders): the loader and the per-sample transforms inside it keep using the global ``random`` /
    ``np.random`` / torch generators as they do, and this wrapper swaps those globals for the stream's
    states around each batch. ``set_thread_id`` (called by batchgenerators in each background worker)
    re-keys the stream to that worker. Other attributes are the loader's.
    """

    def __init__(self, loader: Any, seed: int, stream: int | str):
        self.loader = loader
        self.seed = int(seed)
        self.stream = stream
        self.worker = 0
        self.state = RNGState.from_seed_sequence(stream_seed(self.seed, stream, 0))

    def set_thread_id(self, thread_id: int) -> None:
        self.worker = int(thread_id)
        self.state = RNGState.from_seed_sequence(stream_seed(self.seed, self.stream, self.worker))
        if hasattr(self.loader, "set_thread_id"):
            self.loader.set_thread_id(thread_id)

    def __iter__(self) -> "SeededLoader":
        return self

    def __next__(self):
        with own_rng(self):
            return next(self.loader)

    def __getattr__(self, name: str):
        if name == "loader":  # not set yet (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.loader, name)


class SeededAugmenter(MultiThreadedAugmenter):
    """batchgenerators' ``MultiThreadedAugmenter`` (round-robin over workers: a fixed batch order) built
    with ``NonDetMultiThreadedAugmenter``'s arguments, so that it can stand in for nnU-Net's."""

    def __init__(self, data_loader, transform, num_processes: int, num_cached: int = 2, seeds=None,
                 pin_memory: bool = False, wait_time: float = 0.02, seed: int = 0, stream: int | str = 0):
        loader = data_loader if isinstance(data_loader, SeededLoader) else SeededLoader(data_loader, seed, stream)
        worker_seeds = [int(stream_seed(seed, stream, k).generate_state(1)[0]) for k in range(num_processes)]
        super().__init__(loader, transform, num_processes, num_cached_per_queue=max(1, num_cached // num_processes),
                         seeds=worker_seeds, pin_memory=pin_memory, wait_time=wait_time)


class SeededAugmenterFactory:
    """Stands in for nnU-Net's augmenter classes while a trainer builds its loaders: each call wraps its
    loader in the next stream (0, 1, 2, ... in the order the trainer builds them)."""

    def __init__(self, seed: int, rank: int = 0):
        self.seed = seed
        self.rank = rank  # under DDP each rank draws its own batches (as nnU-Net's unseeded workers do)
        self.built: list[Any] = []

    def _next_stream(self) -> int:
        return len(self.built) + 1000 * self.rank

    def non_det(self, data_loader, transform=None, num_processes: int = 1, num_cached: int = 2, seeds=None,
                pin_memory: bool = False, wait_time: float = 0.02):
        aug = SeededAugmenter(data_loader, transform, num_processes, num_cached, seeds, pin_memory, wait_time,
                              seed=self.seed, stream=self._next_stream())
        self.built.append(aug)
        return aug

    def single(self, data_loader, transform=None):
        aug = _SINGLE_THREADED(SeededLoader(data_loader, self.seed, self._next_stream()), transform)
        self.built.append(aug)
        return aug


@contextlib.contextmanager
def seeded_augmenters(seed: int, rank: int = 0) -> Iterator[SeededAugmenterFactory]:
    """While open, nnU-Net's ``get_dataloaders`` and our :func:`~nnunet_mgcl.trainers.base.wrap_in_augmenter`
    build seeded augmenters. nnU-Net builds its ``NonDetMultiThreadedAugmenter`` / ``SingleThreadedAugmenter``
    inline (no hook), so the names are swapped in the modules that look them up (nnU-Net's trainer module
    and batchgenerators' modules, which our function-local imports read) and restored on exit."""
    import batchgenerators.dataloading.nondet_multi_threaded_augmenter as nondet_mod
    import batchgenerators.dataloading.single_threaded_augmenter as single_mod
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_mod

    factory = SeededAugmenterFactory(seed, rank)
    patches = [(trainer_mod, "NonDetMultiThreadedAugmenter", factory.non_det),
               (trainer_mod, "SingleThreadedAugmenter", factory.single),
               (nondet_mod, "NonDetMultiThreadedAugmenter", factory.non_det),
               (single_mod, "SingleThreadedAugmenter", factory.single)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        yield factory
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def make_deterministic_cuda() -> None:
    """cuDNN without autotuning and with deterministic algorithms (no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
