"""A run's files, and the lock that keeps two processes off them.

``<run>.pth`` is the best model (RecBole's name, ``<model>-<time>.pth``), ``<run>-last.pth`` the resume
point, ``<run>-pretrain.pth`` each side's tables of its lowest-loss pretraining pass. Names are
reserved by exclusive creation, so runs started in the same second never share them, and locked
(``<run>.lock``) from then to the end of the test, so a second process on the same files (two resumes
of one resume point) is refused. Rank 0 alone reserves and locks; every rank learns the outcome.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import socket

from recbole_cllm4rec.checkpoint import load_checkpoint, remove_stale_temporaries, resume_mismatch
from recbole_cllm4rec.distributed import from_first_rank


def run_file(best_model_file: str, ending: str) -> str:
    """The run's file ending in ``ending`` (``-last.pth``, ``-pretrain.pth``, ``.lock``) beside its best model."""
    return best_model_file[: -len(".pth")] + ending


def beside(best_model_file: str, resume_file: str) -> str:
    """The best-model file a resume point names, as seen from here: a relative path (recorded by an
    earlier version, relative to the folder that run started in) is the file of that name beside the
    resume point, not one under the current folder."""
    if os.path.isabs(best_model_file):
        return best_model_file
    return os.path.join(os.path.dirname(os.path.abspath(resume_file)), os.path.basename(best_model_file))


class RunLock:
    """``<run>.lock``, held (``flock``) while a process trains or tests a run's files: two resumes of
    one resume point would write and test the same best model and report each other's results. The
    kernel drops the hold when the process dies, so a killed run never blocks the next one; the file
    says who holds it and goes when it is released."""

    def __init__(self, best_model_file: str) -> None:
        self.path = run_file(best_model_file, ".lock")
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RuntimeError(
                f"{best_model_file} is in use by another run ({holder}): wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # while still held: a process that opens it later makes a new one
            os.close(self.fd)
            self.fd = None


def reserve_run_file(path: str) -> tuple[str, RunLock]:
    """``path`` (RecBole's ``<model>-<second>.pth``), else ``-1``, ``-2``... : the first name this process
    can lock whose best-model file can be created exclusively and whose resume point does not exist.
    Locked before it is created, so a name is never reserved without its lock; the empty file holds
    the name until the best model replaces it, so concurrent runs never share names."""
    stem, k = path[: -len(".pth")], 0
    while True:
        candidate = f"{stem}-{k}.pth" if k else path
        k += 1
        try:
            lock = RunLock(candidate)
        except RuntimeError:
            continue
        if not os.path.exists(run_file(candidate, "-last.pth")):
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return candidate, lock
            except FileExistsError:
                pass
        lock.release()


def remove_orphan_reservations(checkpoint_dir: str, model: str) -> None:
    """Empty best-model files that hold a name for nobody: a run killed before its first checkpoint
    (no resume point, and its lock is free, so no process is about to fill it)."""
    for path in glob.glob(os.path.join(glob.escape(checkpoint_dir), f"{glob.escape(model)}-*.pth")):
        if path.endswith("-last.pth") or os.path.getsize(path):
            continue
        try:
            lock = RunLock(path)
        except RuntimeError:
            continue  # a live run's reservation
        with contextlib.suppress(FileNotFoundError):  # looked at under the lock: nobody fills it meanwhile
            if os.path.getsize(path) == 0 and not os.path.exists(run_file(path, "-last.pth")):
                os.remove(path)
        lock.release()


def reserve_run_files(path: str, checkpoint_dir: str, model: str, rank: int, world: int) -> tuple[str, RunLock | None]:
    """One run, one set of files: rank 0 reserves the names (locked from the start, see
    :func:`reserve_run_file`), every rank gets them; the lock is rank 0's."""
    name, lock = path, None
    if rank == 0:
        remove_orphan_reservations(checkpoint_dir, model)
        name, lock = reserve_run_file(path)
        with contextlib.suppress(FileNotFoundError):  # a run killed before its first resume point may have left one
            os.remove(run_file(name, "-pretrain.pth"))
    return from_first_rank(name, rank, world), lock


def lock_run_files(best_model_file: str, rank: int, world: int) -> RunLock | None:
    """Rank 0 locks a resumed run's files (and clears the temporaries a killed writer left); every rank
    learns whether it may go on, so no rank hangs in a collective while rank 0 refuses."""
    refusal, lock = None, None
    if rank == 0:
        try:
            lock = RunLock(best_model_file)
            remove_stale_temporaries([run_file(best_model_file, end) for end in (".pth", "-last.pth", "-pretrain.pth")])
        except RuntimeError as exc:
            refusal = str(exc)
    refusal = from_first_rank(refusal, rank, world)
    if refusal:
        raise RuntimeError(refusal)
    return lock


def resume_points(checkpoint_dir: str, model: str) -> list[str]:
    """Every ``<model>-*-last.pth`` in ``checkpoint_dir``, newest first."""
    return sorted(glob.glob(os.path.join(glob.escape(checkpoint_dir), f"{glob.escape(model)}-*-last.pth")), key=os.path.getmtime, reverse=True)


def latest_resume_point(checkpoint_dir: str, model: str, dataset: str, split: str | None) -> str:
    """The newest ``<model>-*-last.pth`` in ``checkpoint_dir`` of this dataset and split (``resume: true``)."""
    files = resume_points(checkpoint_dir, model)
    for file in files:
        if resume_mismatch(load_checkpoint(file, "cpu", verify=False), model, dataset, split) is None:
            return file
    raise FileNotFoundError(
        f"resume: no {model}-*-last.pth checkpoint of {dataset} (split {split}) in {checkpoint_dir}"
        + (f" ({len(files)} of other datasets or splits)" if files else "")
    )
