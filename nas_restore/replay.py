"""The "rain review" buffer of continual learning (RRGNet): stored samples of old tasks, replayed in every batch.

Two ways to decide what is kept when a task ends (``policy``):

* ``quota``: every task seen so far keeps an equal share ``capacity // n_tasks`` (the first tasks get
  the remainder); a new task shrinks the older shares, dropping their most recently kept items first,
  so the task mix stays balanced whatever the task lengths.
* ``reservoir``: the items of each finished task are streamed through reservoir sampling (Vitter's
  algorithm R), so every item streamed so far is kept with the same probability ``capacity / seen``
  and the task mix is proportional to the tasks' sizes.

The buffer holds tensors (not indices), so a replayed old task needs neither its data set nor its
folder any more. Its ``state_dict`` holds only tensors, strings and numbers (loads with
``torch.load(weights_only=True)``), which is how a continual run resumes with the same buffer.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

POLICIES = ("quota", "reservoir")


class ReplayBuffer:
    """At most ``capacity`` (frames, target) samples of finished tasks, each labelled with its task."""

    def __init__(self, capacity: int, policy: str = "quota", seed: int = 0) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"replay buffer capacity must be an integer >= 1, got {capacity!r}")
        if policy not in POLICIES:
            raise ValueError(f"replay policy must be one of {POLICIES}, got {policy!r}")
        self.capacity, self.policy = capacity, policy
        self._generator = torch.Generator().manual_seed(int(seed))
        self.frames: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.tasks: list[str] = []
        self.seen = 0                      # items streamed so far (reservoir)
        self.task_order: list[str] = []    # finished tasks, in order

    def __len__(self) -> int:
        return len(self.tasks)

    def task_counts(self) -> dict[str, int]:
        """How many stored samples each finished task has (tasks in the order they were added)."""
        counts = Counter(self.tasks)
        return {task: counts.get(task, 0) for task in self.task_order}

    def add_task(self, task: str, data: Dataset) -> None:
        """Store samples of the finished task ``task`` drawn from ``data`` (items ``(frames, target)``)."""
        if task in self.task_order:
            raise ValueError(f"task {task!r} is already in the replay buffer: task names must be unique")
        n = len(data)  # type: ignore[arg-type]
        if n < 1:
            raise ValueError(f"task {task!r} has no items to store in the replay buffer")
        self.task_order.append(task)
        if self.policy == "quota":
            self._add_quota(task, data, n)
        else:
            self._add_reservoir(task, data, n)
        log.info("replay buffer after %s: %s", task, self.task_counts())

    def _store(self, data: Dataset, index: int, task: str, slot: int | None = None) -> None:
        frames, target = data[index]
        frames, target = torch.as_tensor(frames).detach().clone(), torch.as_tensor(target).detach().clone()
        if slot is None:
            self.frames.append(frames)
            self.targets.append(target)
            self.tasks.append(task)
        else:
            self.frames[slot], self.targets[slot], self.tasks[slot] = frames, target, task

    def _quotas(self) -> list[int]:
        n_tasks = len(self.task_order)
        base, extra = divmod(self.capacity, n_tasks)
        return [base + (1 if i < extra else 0) for i in range(n_tasks)]

    def _add_quota(self, task: str, data: Dataset, n: int) -> None:
        quotas = dict(zip(self.task_order, self._quotas()))
        kept: dict[str, int] = Counter()
        keep = []
        for i, old in enumerate(self.tasks):  # keep each old task's earliest items up to its new quota
            if kept[old] < quotas[old]:
                kept[old] += 1
                keep.append(i)
        self.frames = [self.frames[i] for i in keep]
        self.targets = [self.targets[i] for i in keep]
        self.tasks = [self.tasks[i] for i in keep]
        order = torch.randperm(n, generator=self._generator)[: quotas[task]].tolist()
        for index in order:
            self._store(data, index, task)

    def _add_reservoir(self, task: str, data: Dataset, n: int) -> None:
        order = torch.randperm(n, generator=self._generator).tolist()
        for index in order:
            self.seen += 1
            if len(self.tasks) < self.capacity:
                self._store(data, index, task)
                continue
            # algorithm R: keep the seen-th item with probability capacity / seen, in a random slot
            slot = int(torch.randint(self.seen, (1,), generator=self._generator))
            if slot < self.capacity:
                self._store(data, index, task, slot)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, list[str]]:
        """``n`` stored samples drawn uniformly with replacement: frames [n,T,3,H,W], targets [n,3,H,W], tasks."""
        if not self.tasks:
            raise ValueError("the replay buffer is empty: add a finished task before sampling")
        if n < 1:
            raise ValueError(f"replay sample size must be >= 1, got {n}")
        picks = torch.randint(len(self.tasks), (n,), generator=generator or self._generator).tolist()
        return (torch.stack([self.frames[i] for i in picks]), torch.stack([self.targets[i] for i in picks]),
                [self.tasks[i] for i in picks])

    def state_dict(self) -> dict[str, Any]:
        empty = torch.zeros(0)
        return {"capacity": self.capacity, "policy": self.policy, "seen": self.seen,
                "task_order": list(self.task_order), "tasks": list(self.tasks),
                "frames": torch.stack(self.frames) if self.frames else empty,
                "targets": torch.stack(self.targets) if self.targets else empty,
                "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity or state["policy"] != self.policy:
            raise ValueError(f"saved replay buffer is {state['policy']} with capacity {state['capacity']}, not "
                             f"{self.policy} with {self.capacity}: use the run's original replay settings")
        self.seen = int(state["seen"])
        self.task_order, self.tasks = list(state["task_order"]), list(state["tasks"])
        self.frames = list(state["frames"].unbind(0)) if self.tasks else []
        self.targets = list(state["targets"].unbind(0)) if self.tasks else []
        self._generator.set_state(state["generator"])
