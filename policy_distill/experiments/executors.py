"""Where the sweep's cells run: here, one after another (``local``), or as tasks of a Ray
cluster (``ray``). Both take the cells that have no results row and hand back each cell's row
as it finishes; the driver (:func:`.sweep.reproduce`) alone appends rows to the results table,
so the table stays the one record of what is finished, whichever executor ran the cells.

Ray: one task per cell (one GPU each where the cluster has GPUs, else ``cpus_per_cell`` CPUs),
retried up to ``cell_retries`` times when its worker dies; the rerun resumes the cell's run
directory from its ``latest.pt`` (distill's own resume), so a killed cell is neither lost nor
run twice, and its one row is written when it returns. Datasets, teachers and run directories
reach the workers **by path, on a filesystem every node shares** (NFS, a cluster filesystem,
or this machine's disk for a local Ray): the run directories must be shared anyway for a
rerun on another node to resume, and for the driver to read the students it scores. On start,
one probe task per node checks that it sees every game's dataset with the content hash the
driver sees, the same teacher file, and the driver's runs directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from policy_distill.errors import UserError

RunCell = Callable[[tuple[Any, ...], str, str], dict[str, Any]]
"""Runs one cell: ``(key, label, hardware) -> results row`` (the sweep's ``_run_cell`` with its
settings bound; a module-level function's ``partial``, so that Ray ships it by reference)."""


class LocalExecutor:
    """Runs the cells in this process, one after another, in grid order."""

    def __init__(self, cfg: Any, run_cell: RunCell, hardware: str) -> None:
        self.run_cell, self.hardware = run_cell, hardware

    def run(self, cells: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(cell, row)`` for each cell (a ``.sweep.Cell``: ``key``, ``label``) as it finishes."""
        for cell in cells:
            yield cell, self.run_cell(cell.key, cell.label, self.hardware)

    def close(self) -> None:
        pass


def _cell_task(run_cell: RunCell, key: tuple[Any, ...], label: str) -> dict[str, Any]:
    """A Ray task: one cell's distill() run on whichever node Ray chose; returns its row."""
    from policy_distill.checkpoint import hardware_description

    return run_cell(key, label, hardware_description())


def _probe_task(paths: dict[str, str]) -> dict[str, Any]:
    """A Ray task pinned to one node: what it sees at the driver's paths (``data:<game>`` ->
    dataset directory, ``teacher:<game>`` -> teacher file, ``marker`` -> a file the driver wrote
    in the runs directory)."""
    import socket

    from policy_distill.dataset import recorded_content_sha256

    seen: dict[str, Any] = {"node": socket.gethostname()}
    for name, path in paths.items():
        p = Path(path)
        if name.startswith("data:"):
            seen[name] = recorded_content_sha256(p)
        elif name.startswith("teacher:"):
            seen[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        else:
            seen[name] = p.read_text() if p.is_file() else None
    return seen


class RayExecutor:
    """Runs each cell as a Ray task and yields rows as tasks finish (any order)."""

    def __init__(self, cfg: Any, run_cell: RunCell, hardware: str) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(
                "`executor` ray needs Ray: pip install 'policy-distill[ray]' (or pip install ray)"
            ) from None
        self.ray, self.cfg, self.run_cell = ray, cfg, run_cell
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=cfg.address or None, include_dashboard=False, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"the Ray cluster at {cfg.address}" if cfg.address else "a local Ray cluster"
                raise UserError(
                    f"could not start or reach {where} ({str(e).splitlines()[0][:150]}); check `address`"
                ) from None
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            resources = {"num_gpus": 1, "num_cpus": 1} if gpus > 0 else {"num_cpus": cfg.cpus_per_cell}
            self.task = ray.remote(max_retries=cfg.cell_retries, **resources)(_cell_task)
            self._check_workers()
        except BaseException:
            self.close()
            raise

    def _check_workers(self) -> None:
        """Refuse to start unless every alive node sees the driver's datasets, teachers and
        runs directory (by path: the shared filesystem these runs need)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from policy_distill.dataset import recorded_content_sha256

        cfg = self.cfg
        runs = Path(cfg.runs_dir)
        runs.mkdir(parents=True, exist_ok=True)
        marker = runs / f".ray-probe-{secrets.token_hex(4)}"
        marker.write_text(token := secrets.token_hex(8))
        paths: dict[str, str] = {"marker": str(marker.resolve())}
        expected: dict[str, Any] = {"marker": token}
        for game in cfg.game_list():
            data = Path(cfg.data.replace("{game}", game))
            if not (data / "meta.json").is_file():
                raise UserError(
                    f"no dataset in {data}: with `executor` ray record it first (cells would all record "
                    f"it at once): python -m policy_distill collect --game {game} --out {data}"
                )
            paths[f"data:{game}"] = str(data.resolve())
            expected[f"data:{game}"] = recorded_content_sha256(data)
            if cfg.teacher:
                teacher = Path(cfg.teacher.replace("{game}", game))
                if teacher.is_file():  # a shipped name resolves inside the installed package
                    paths[f"teacher:{game}"] = str(teacher.resolve())
                    expected[f"teacher:{game}"] = hashlib.sha256(teacher.read_bytes()).hexdigest()
        probe = self.ray.remote(num_cpus=0)(_probe_task)
        try:
            nodes = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive")]
            seen = self.ray.get(
                [
                    probe.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                    ).remote(paths)
                    for node in nodes
                ]
            )
        except self.ray.exceptions.RayTaskError as e:  # a probe's own error (a damaged meta.json)
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(f"a Ray node's check of the shared files failed: {cause}") from None
            raise
        finally:
            marker.unlink(missing_ok=True)
        for answer in seen:
            differ = [name for name, value in expected.items() if answer.get(name) != value]
            if differ:
                what = ", ".join(
                    "the runs directory" if n == "marker" else n.replace(":", " of ") for n in differ
                )
                raise UserError(
                    f"Ray node {answer['node']} does not see the same {what} as this driver "
                    f"({', '.join(paths[n] for n in differ)}): datasets, teachers and `runs_dir` must be "
                    "on a filesystem every node shares, at the same paths"
                )

    def run(self, cells: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(cell, row)`` for each cell as its task returns (any order); all are submitted at once."""
        ray = self.ray
        waiting = {self.task.remote(self.run_cell, cell.key, cell.label): cell for cell in cells}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            cell = waiting.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:  # the cell's own error, raised in the worker
                cause = getattr(e, "cause", None)
                if isinstance(cause, UserError):
                    raise UserError(f"{cell.label}: {cause}") from None
                raise
            except ray.exceptions.RayError as e:  # a worker died more often than cell_retries
                raise UserError(
                    f"{cell.label}: its Ray task failed {self.cfg.cell_retries + 1} times "
                    f"({type(e).__name__}: {_first_line(e)}); run the same command again to resume it"
                ) from None
            yield cell, row

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


@contextlib.contextmanager
def make_executor(cfg: Any, run_cell: RunCell, hardware: str) -> Iterator[LocalExecutor | RayExecutor]:
    """The executor ``cfg.executor`` names (``cfg``: a ``.sweep.SweepConfig``), shut down (a Ray
    it started) when the sweep ends."""
    kind = RayExecutor if cfg.executor == "ray" else LocalExecutor
    executor = kind(cfg, run_cell, hardware)
    try:
        yield executor
    finally:
        executor.close()
