"""CLLM4Rec's two-stage schedule on top of RecBole's ``Trainer``.

1. Mutually-regularized pretraining (lr ``pretrain_learning_rate``):
   ``content_warmup_epochs`` epochs of the content LM alone, then ``pretrain_epochs`` epochs that
   each run one pass of the collaborative LM and one pass of the content LM, each regularized
   toward the other side's (frozen for that step) embeddings.
2. Recommendation-oriented finetuning (lr ``learning_rate``, ``epochs``): RecBole's own ``fit``
   loop (validation, early stopping, checkpoints); each epoch is one pass of the masked-history
   recommendation loss and, if ``finetune_content``, one regularized content LM pass.

Batches are built from the model's tensors, packed by length to ``train_batch_tokens`` padded tokens,
so little compute goes to padding and short documents still fill a batch.

Every pass seeds torch's RNG from (seed, stage, epoch). Under torch.distributed (RecBole's
launcher or torchrun) each rank builds every batch's documents, runs its own share of them and the
ID tables' gradients are summed over ranks, so a run on N ranks follows the one-process run;
evaluation gathers every rank's users before computing metrics; only rank 0 writes files.

Checkpoints hold only what trains (the four ID tables, the optimizer) plus stage, epoch, RNG states
and the backbone's fingerprint. ``<run>.pth`` is the best model (RecBole's), ``<run>-last.pth`` the
resume point written after every epoch of either stage (with ``finetune_start: lowest_loss``,
``<run>-pretrain.pth`` holds each side's tables of its lowest-loss pretraining pass); both are written atomically, carry a
checksum of their tensors (verified on every load) and the split fingerprint. File names are
reserved by exclusive creation, so runs started in the same second never share them, and locked
(``<run>.lock``) from then to the end of the test, so a second process on the same files (two resumes
of one resume point) is refused. A resume point must match the run's model, dataset and split; one of
a finished run only re-tests its best model.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import math
import os
import random
import shutil
import socket
import zlib
from time import time

import numpy as np
import torch
import torch.distributed as dist
from recbole.trainer import Trainer
from recbole.trainer.trainer import AbstractTrainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_cllm4rec.batches import token_budget_batches
from recbole_cllm4rec.config_rules import Rule, check_config_values


def state_checksum(state_dict: dict) -> str:
    """blake2b of every tensor's name, dtype, shape and bytes: any changed value changes it."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def atomic_save(state: dict, path: str) -> None:
    """``torch.save`` (with the tensors' checksum) to a temporary file, then rename: a crash never
    leaves a half-written checkpoint."""
    state = {**state, "checksum": state_checksum(state["state_dict"])}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp, pickle_protocol=4)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as "enforce fail ... unexpected pos"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        said = " ".join(str(exc).split())[:200]
        reason = "no space left on its disk" if free < 64 * 2**20 else f"{type(exc).__name__}: {said}"
        raise OSError(
            f"could not write {path} ({reason}, {free / 2**20:.0f} MiB free): the previous {os.path.basename(path)} "
            "is kept as it was; free space and resume with --resume=True"
        ) from exc


def remove_stale_temporaries(best_model_file: str) -> None:
    """The ``.tmp<pid>`` files a killed process left beside a run's checkpoints (its rename never came).
    Called by the holder of the run's lock, the only process that writes them: every one found is stale."""
    stem = glob.escape(best_model_file[: -len(".pth")])
    for tmp in [path for end in (".pth", "-last.pth", "-pretrain.pth") for path in glob.glob(f"{stem}{end}.tmp*")]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def load_checkpoint(path: str, device, verify: bool = True) -> dict:
    """Load a checkpoint of this trainer, with a clear error for a missing, damaged or altered file.

    ``verify`` recomputes the tensors' checksum (files of RecBole's own trainer have none).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(  # our own file: holds the Config
            path, map_location=device, weights_only=False, mmap=torch.device(device).type == "cpu"
        )
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} is unreadable (truncated or corrupted?): {exc}") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RuntimeError(f"{path} is not a RecBole checkpoint")
    if verify and "checksum" in checkpoint and state_checksum(checkpoint["state_dict"]) != checkpoint["checksum"]:
        raise RuntimeError(f"checkpoint {path} is corrupted: its tensors do not match their checksum")
    return checkpoint


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_mismatch(checkpoint: dict, model: str, dataset: str, split: str | None) -> str | None:
    """Why ``checkpoint`` cannot continue a run of ``model`` on ``dataset`` with split ``split``."""
    config = checkpoint["config"]
    if config["model"] != model or config["dataset"] != dataset:
        return f"it is a {config['model']} run on {config['dataset']}, not {model} on {dataset}"
    if split and checkpoint.get("split") and checkpoint["split"] != split:
        return f"it was trained on another split of {dataset} (fingerprint {checkpoint['split']}, this run's {split})"
    return None


def latest_resume_point(checkpoint_dir: str, model: str, dataset: str, split: str | None) -> str:
    """The newest ``<model>-*-last.pth`` in ``checkpoint_dir`` of this dataset and split (``resume: true``)."""
    files = sorted(glob.glob(os.path.join(checkpoint_dir, f"{model}-*-last.pth")), key=os.path.getmtime, reverse=True)
    for file in files:
        if resume_mismatch(load_checkpoint(file, "cpu", verify=False), model, dataset, split) is None:
            return file
    raise FileNotFoundError(
        f"resume: no {model}-*-last.pth checkpoint of {dataset} (split {split}) in {checkpoint_dir}"
        + (f" ({len(files)} of other datasets or splits)" if files else "")
    )


class GatheredEvaluator:
    """RecBole's evaluator over every rank's users: exactly the metrics of one process.

    Under torch.distributed RecBole's evaluation loader gives each rank users ``rank::world``,
    padded with repeats to equal counts, and averages per-rank metrics (rounded first). Instead, the
    per-user rows each rank collected are gathered, the repeats dropped, and metrics computed once.
    """

    def __init__(self, evaluator, rank: int, world: int) -> None:
        self.evaluator, self.rank, self.world = evaluator, rank, world
        self.n_users = 0  # users of the evaluation set, set before each evaluation

    def evaluate(self, struct):
        real = [len(range(r, self.n_users, self.world)) for r in range(self.world)]
        for key, value in list(struct._data_dict.items()):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == max(real):
                parts = [torch.empty_like(value) for _ in range(self.world)]
                dist.all_gather(parts, value.contiguous())
                struct[key] = torch.cat([part[:n] for part, n in zip(parts, real)])
        return self.evaluator.evaluate(struct)


class RunLock:
    """``<run>.lock``, held (``flock``) while a process trains or tests a run's files: two resumes of
    one resume point would write and test the same best model and report each other's results. The
    kernel drops the hold when the process dies, so a killed run never blocks the next one; the file
    says who holds it and goes when it is released."""

    def __init__(self, best_model_file: str) -> None:
        self.path = best_model_file[: -len(".pth")] + ".lock"
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
        if not os.path.exists(candidate[: -len(".pth")] + "-last.pth"):
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
            if os.path.getsize(path) == 0 and not os.path.exists(path[: -len(".pth")] + "-last.pth"):
                os.remove(path)
        lock.release()


class _WithoutDDP(AbstractTrainer):
    """Data parallelism is CLLM4Rec's own, not RecBole's: RecBole's ``AbstractTrainer`` would wrap the
    whole model (frozen backbone included) in DDP with CUDA device ids; here only the ID tables'
    gradients are all-reduced. Placed after ``Trainer`` in the MRO, its constructor replaces
    ``AbstractTrainer``'s for CLLM4Rec alone."""

    def __init__(self, config, model):
        self.config = config
        self.model = model


class CLLM4RecTrainer(Trainer, _WithoutDDP):
    # the schedule's keys of properties/CLLM4Rec.yaml (the model's are CLLM4Rec.CONFIG_RULES)
    CONFIG_RULES = {
        "content_warmup_epochs": Rule(int, low=0),
        "pretrain_epochs": Rule(int, low=0),
        "pretrain_learning_rate": Rule(float, low=0),
        "learning_rate_decay": Rule(float, low=0, high=1),
        "finetune_content": Rule(bool),
        "finetune_start": Rule(str, choices=("last", "lowest_loss")),
    }

    def __init__(self, config, model):
        check_config_values(config, self.CONFIG_RULES)
        distributed = not config["single_spec"]
        # RecBole's ensure_dir checks, then creates: ranks would race on it
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.loss_history: list[tuple[str, str, int, float, float]] = []  # (phase, stage, epoch, loss, reg)
        self.stage_seconds: dict[str, float] = {}  # wall time per "phase/stage", summed over epochs
        self.valid_history: list[dict] = []  # validation metrics after each finetuning epoch (the curve)
        self.plain_prompt_loss: float | None = None  # the content corpus read by the plain LM, once
        self.pretrain_epochs = config["pretrain_epochs"]
        self.content_warmup_epochs = config["content_warmup_epochs"]
        self.pretrain_learning_rate = config["pretrain_learning_rate"]
        self.finetune_content = config["finetune_content"]
        self.learning_rate_decay = config["learning_rate_decay"]
        self.finetune_start = config["finetune_start"]
        # lowest_loss: per side, (pretraining epoch, loss + mutual reg) of its lowest pretraining pass;
        # that pass's tables are in lowest_loss_file
        self.lowest_pretrain_loss: dict[str, tuple[int, float]] = {}
        # users with at least one training item: the collaborative and recommendation documents
        self.train_users = torch.nonzero(model.documents.history_len > 0).squeeze(1).cpu()
        self.split_fingerprint: str | None = None  # set by the runner: stored in checkpoints, checked on resume
        self.finished = False  # a resumed run that had already finished: fit only re-tests it
        self.last_epoch = -1  # the last finetuning epoch validated (and saved as the resume point)
        self.resumed = False  # a resumed run keeps the files it continues; a new one reserves its own in fit
        self.pretrain_optimizer = self._build_optimizer(learning_rate=self.pretrain_learning_rate)
        self.pretrain_start = 0  # pretraining epochs already done (warm-up included), set by resume
        self.finetuning = False
        self.lock: RunLock | None = None  # rank 0's, held from the files' reservation (or the resume) to the test
        self.files_locked = False
        if self.world > 1:
            # one run, one starting point (rank 0's ID tables)
            for parameter in model.trainable_parameters():
                dist.broadcast(parameter.data, src=0)
            self.evaluator = GatheredEvaluator(self.evaluator, self.rank, self.world)

    @property
    def resume_file(self) -> str:
        return self.saved_model_file[: -len(".pth")] + "-last.pth"

    @property
    def lowest_loss_file(self) -> str:
        """``<run>-pretrain.pth``: each side's tables after its lowest-loss pretraining pass."""
        return self.saved_model_file[: -len(".pth")] + "-pretrain.pth"

    # ------------------------------------------------------------------ checkpoints
    def _reserve_files(self) -> None:
        """One run, one set of files: rank 0 reserves the names (locked from the start), every rank uses them."""
        names = [None]
        if self.rank == 0:
            remove_orphan_reservations(self.config["checkpoint_dir"], self.config["model"])
            names[0], self.lock = reserve_run_file(self.saved_model_file)
        if self.world > 1:
            dist.broadcast_object_list(names, src=0)
        self.saved_model_file = names[0]
        if self.rank == 0:  # a run killed before its first resume point may have left one
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lowest_loss_file)
        self.files_locked = True

    def _lock_files(self) -> None:
        """Rank 0 locks the run's files; every rank learns whether it may go on (no rank hangs in a
        collective while rank 0 refuses)."""
        if self.files_locked:  # the same answer on every rank: no rank waits in a broadcast alone
            return
        refusal = [None]
        if self.rank == 0:
            try:
                self.lock = RunLock(self.saved_model_file)
                remove_stale_temporaries(self.saved_model_file)  # only the process holding the lock may
            except RuntimeError as exc:
                refusal = [str(exc)]
        if self.world > 1:
            dist.broadcast_object_list(refusal, src=0)
        if refusal[0]:
            raise RuntimeError(refusal[0])
        self.files_locked = True

    def release_files(self) -> None:
        """Let other processes use this run's files (after its test)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.files_locked = False

    def _state(self, epoch: int, optimizer) -> dict:
        return {
            "config": self.config,
            "stage": "finetune" if self.finetuning else "pretrain",
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result,
            "best_model_file": self.saved_model_file,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "valid_history": self.valid_history,
            "lowest_pretrain_loss": self.lowest_pretrain_loss,
            "split": self.split_fingerprint,
            "finished": self.finished,
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's best-model checkpoint, atomic and lean: ID tables and config, no optimizer state."""
        if self.rank != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        if epoch == -1 and os.path.isfile(path) and os.path.getsize(path) > 0:
            return  # RecBole's fit saves the current model when no epoch is left: the best one stays
        state = self._state(epoch, self.optimizer)
        del state["optimizer"], state["rng"], state["valid_history"], state["lowest_pretrain_loss"]
        atomic_save(state, path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def _save_resume_point(self, epoch: int) -> None:
        if self.rank != 0:
            return
        optimizer = self.optimizer if self.finetuning else self.pretrain_optimizer
        atomic_save(self._state(epoch, optimizer), self.resume_file)

    def resume_checkpoint(self, resume_file):
        """Continue after the last completed epoch of whichever stage was running."""
        checkpoint = load_checkpoint(str(resume_file), self.device)
        if "rng" not in checkpoint:
            raise ValueError(f"{resume_file} is a best-model checkpoint: resume from the run's -last.pth file")
        mismatch = resume_mismatch(checkpoint, self.config["model"], self.config["dataset"], self.split_fingerprint)
        if mismatch:
            raise ValueError(f"cannot resume from {resume_file}: {mismatch}")
        self.model.load_state_dict(checkpoint["state_dict"])  # refuses another backbone
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.saved_model_file = checkpoint["best_model_file"]
        self._lock_files()  # refuses a second process on the same run
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"]
        self.valid_history = checkpoint.get("valid_history", [])
        self.lowest_pretrain_loss = checkpoint.get("lowest_pretrain_loss", {})
        if checkpoint["stage"] == "finetune":
            self.pretrain_start = self.content_warmup_epochs + self.pretrain_epochs
            self.start_epoch = checkpoint["epoch"] + 1
            self.last_epoch = checkpoint["epoch"]
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        else:
            self.pretrain_start = checkpoint["epoch"] + 1
            self.pretrain_optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        self.finished = bool(checkpoint.get("finished"))
        self.resumed = True
        self.logger.info(
            f"Resuming from {resume_file}: {checkpoint['stage']} stage after epoch {checkpoint['epoch']}"
            + (" (the run had finished: its best model is only tested again)" if self.finished else "")
        )

    def _build_optimizer(self, **kwargs):
        """The optimizer sees only what trains (ID tables, item bias, adapters), never the frozen backbone."""
        kwargs.setdefault("params", self.model.optimizer_groups(kwargs.get("learning_rate", self.learning_rate)))
        return super()._build_optimizer(**kwargs)

    # ------------------------------------------------------------------ one pass over a corpus
    def stage_documents(self, stage: str, regularize: bool = True):
        """(document units, their token counts, the loss step) of a stage: content docs or training users."""
        model, shard = self.model, (self.rank, self.world)
        if stage == "content":
            units = torch.arange(len(model.documents.content))
            step = lambda batch: model.content_lm_loss(batch, shard, regularize=regularize)  # noqa: E731
        else:
            units = self.train_users
            loss = {"collaborative": model.collaborative_lm_loss, "recommendation": model.recommendation_loss}[stage]
            step = lambda batch: loss(batch, shard)  # noqa: E731
        return units, model.documents.lengths(stage, units.to(self.device)).cpu(), step

    def stage_batches(self, stage: str, regularize: bool = True):
        """One epoch's batches of a stage and its loss step: packed by length to ``train_batch_tokens``
        padded tokens, or, with ``train_batch_documents`` N, N documents in random order per step (the
        public code's 20: each padded to its batch's longest)."""
        units, lengths, step = self.stage_documents(stage, regularize)
        per_step = self.config["train_batch_documents"]
        if per_step:
            return list(units[torch.randperm(len(units))].split(per_step)), step
        return [units[b] for b in token_budget_batches(lengths, self.config["train_batch_tokens"])], step

    def _seed_pass(self, stage: str, epoch_idx: int) -> None:
        """Seed torch's RNG from (seed, stage, epoch): batches, item orders and masks of an epoch are
        the same on every rank, in one process or several, and after a resume."""
        phase = "finetune" if self.finetuning else "pretrain"
        torch.manual_seed(zlib.crc32(f"{self.config['seed']}/{phase}/{stage}/{epoch_idx}".encode()))

    def _all_reduce_gradients(self) -> None:
        """Sum the ID tables' gradients over ranks (each rank's loss is already scaled to the whole batch).

        A table no rank touched keeps ``grad = None``, so Adam leaves it alone as in one process.
        """
        parameters = self.model.trainable_parameters()
        touched = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
        dist.all_reduce(touched)
        for parameter, flag in zip(parameters, touched.tolist()):
            if flag:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad)

    def train_step(self, batch: torch.Tensor, step, optimizer) -> torch.Tensor | None:
        """One optimizer step on ``batch`` (loss step from :meth:`stage_batches`); returns (loss, reg)
        summed over ranks, or ``None`` (and no update) when they or the gradients are not finite."""
        optimizer.zero_grad()
        if len(batch) > self.rank:  # a batch with fewer documents than ranks leaves some ranks idle
            loss, reg = step(batch.to(self.device))
            (loss + reg).backward()
            losses = torch.stack([loss.detach(), reg.detach()]).double().cpu()
        else:
            losses = torch.zeros(2, dtype=torch.float64)
        if self.world > 1:
            self._all_reduce_gradients()
            dist.all_reduce(losses)
        grads = [p.grad.isfinite().all() for p in self.model.trainable_parameters() if p.grad is not None]
        if not torch.isfinite(losses).all() or (grads and not torch.stack(grads).all()):
            return None
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), **self.clip_grad_norm)
        optimizer.step()
        return losses

    def _run_pass(self, stage: str, optimizer, epoch_idx: int, show_progress: bool, regularize: bool = True):
        """One epoch of ``stage`` (collaborative / content / recommendation); returns (loss, reg) means."""
        model = self.model
        model.train()
        start = time()
        self._seed_pass(stage, epoch_idx)
        batches, step = self.stage_batches(stage, regularize)
        if show_progress:
            batches = tqdm(batches, total=len(batches), ncols=100, desc=set_color(f"{stage:>14} {epoch_idx:>3}", "pink"))
        totals = torch.zeros(2, dtype=torch.float64)
        for batch_idx, batch in enumerate(batches):
            losses = self.train_step(batch, step, optimizer)
            if losses is None:
                raise ValueError(
                    f"{stage} loss or its gradient is not finite in epoch {epoch_idx}, batch {batch_idx}: training stopped; "
                    f"the last completed epoch is in {self.resume_file}"
                )
            totals += losses
        loss, reg = (totals / max(len(batches), 1)).tolist()
        phase = "finetune" if self.finetuning else "pretrain"
        self.loss_history.append((phase, stage, epoch_idx, loss, reg))
        self.stage_seconds[f"{phase}/{stage}"] = self.stage_seconds.get(f"{phase}/{stage}", 0.0) + time() - start
        return loss, reg

    @torch.no_grad()
    def content_eval_loss(self, plain: bool = False) -> float:
        """The content LM's loss on its whole corpus, without training: the mean over the content
        stage's batches of their loss per text token, as its training loss is reported. ``plain``: the
        frozen LM's own, with the words ``user`` / ``item`` in place of the ID tokens."""
        self.model.eval()
        self._seed_pass("content", -1)
        batches, _ = self.stage_batches("content", regularize=False)
        shard, losses = (self.rank, self.world), torch.zeros(len(batches), dtype=torch.float64)
        for k, batch in enumerate(batches):
            if len(batch) > self.rank:
                losses[k] = self.model.content_lm_loss(batch.to(self.device), shard, regularize=False, plain=plain)[0].item()
        if self.world > 1:
            dist.all_reduce(losses)
        return losses.mean().item()

    def content_reference_loss(self) -> float:
        """The plain prompt's loss (``content_eval_loss(plain=True)``), once per run: the content LM's ID
        tokens carry their user or item only where its loss is below this."""
        if self.plain_prompt_loss is None:
            self.plain_prompt_loss = self.content_eval_loss(plain=True)
        return self.plain_prompt_loss

    def _log_pass(self, phase: str, stage: str, epoch_idx: int, start: float, losses: tuple[float, float]) -> None:
        """A pretraining pass in the log and in TensorBoard (finetuning epochs go through RecBole's); a
        content pass beside the plain prompt's loss and a uniform guess's (nats per text token)."""
        elapsed = time() - start
        self.tensorboard.add_scalar(f"Pretrain/{stage} loss", losses[0], epoch_idx)
        self.tensorboard.add_scalar(f"Pretrain/{stage} mutual reg", losses[1], epoch_idx)
        references = ""
        if stage == "content":
            plain, uniform = self.content_reference_loss(), math.log(self.model.layout.vocab_size)
            self.tensorboard.add_scalar("Pretrain/content loss, plain prompt", plain, epoch_idx)
            references = f", {set_color('plain prompt', 'blue')}: {plain:.4f}, {set_color('uniform', 'blue')}: {uniform:.4f}"
        self.logger.info(
            set_color(f"{phase} epoch {epoch_idx} {stage}", "green")
            + f" [{set_color('time', 'blue')}: {elapsed:.2f}s, "
            + f"{set_color('loss', 'blue')}: {losses[0]:.4f}, {set_color('mutual reg', 'blue')}: {losses[1]:.4f}"
            + references + "]"
        )

    # ------------------------------------------------------------------ stage 1
    def pretrain(self, show_progress: bool = False) -> None:
        """Content warm-up, then alternating collaborative / content epochs with mutual regularization.

        Pretraining epochs are numbered across both phases (warm-up first); a resume point is saved
        after each.
        """
        has_content = len(self.model.documents.content) > 0
        if not has_content and (self.pretrain_epochs or self.content_warmup_epochs):
            self.logger.warning("no content documents: pretraining runs the collaborative LM only")
        if has_content and self.pretrain_start < self.content_warmup_epochs + self.pretrain_epochs:
            self.content_reference_loss()  # before any step: with LoRA, the adapters start as no-ops
        warmup = self.content_warmup_epochs
        for epoch_idx in range(self.pretrain_start, warmup + self.pretrain_epochs):
            if epoch_idx < warmup:
                stages, phase = (("content",) if has_content else ()), "content warm-up"
            else:
                stages, phase = (("collaborative", "content") if has_content else ("collaborative",)), "pretraining"
            for stage in stages:
                start = time()
                losses = self._run_pass(
                    stage, self.pretrain_optimizer, epoch_idx, show_progress, regularize=epoch_idx >= warmup
                )
                self._log_pass(phase, stage, epoch_idx, start, losses)
                if self.finetune_start == "lowest_loss":
                    self._keep_if_lowest(stage, epoch_idx, sum(losses))
            self._save_resume_point(epoch_idx)

    def _keep_if_lowest(self, side: str, epoch_idx: int, loss: float) -> None:
        """After a pretraining pass of ``side``: if ``loss`` (LM + mutual reg, as the public code
        compares) is the side's lowest yet, its tables replace that side's in ``lowest_loss_file``."""
        if side in self.lowest_pretrain_loss and self.lowest_pretrain_loss[side][1] <= loss:
            return
        self.lowest_pretrain_loss[side] = (epoch_idx, loss)
        if self.rank != 0:
            return
        path = self.lowest_loss_file
        tables = dict(load_checkpoint(path, "cpu")["state_dict"]) if os.path.isfile(path) else {}
        for kind, table in zip(("user", "item"), self.model.tables(side)):
            tables[f"{side}/{kind}"] = table.weight.detach().cpu().clone()
        atomic_save({"state_dict": tables, "lowest_pretrain_loss": self.lowest_pretrain_loss}, path)

    def _start_from_lowest_loss(self) -> None:
        """``finetune_start: lowest_loss``: each side's tables go back to its lowest-loss pretraining
        pass, as the public code saves a side's embeddings only when its epoch loss improves."""
        if not self.lowest_pretrain_loss:
            return
        if self.world > 1:
            dist.barrier()  # rank 0's file is complete
        tables = load_checkpoint(self.lowest_loss_file, self.device)["state_dict"]
        with torch.no_grad():
            for side in self.lowest_pretrain_loss:
                for kind, table in zip(("user", "item"), self.model.tables(side)):
                    table.weight.copy_(tables[f"{side}/{kind}"])
        self.logger.info(
            "finetuning starts from each side's lowest pretraining loss: "
            + ", ".join(f"{side} epoch {epoch} ({loss:.4f})" for side, (epoch, loss) in self.lowest_pretrain_loss.items())
        )

    # ------------------------------------------------------------------ stage 2 (RecBole's loop)
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.finished:  # never train on (or save over) a finished run's files
            return self.best_valid_score, self.best_valid_result
        if saved and not self.resumed:
            self._reserve_files()
        self.pretrain(show_progress=show_progress)
        if self.finetune_start == "lowest_loss" and self.start_epoch == 0:  # not when resuming finetuning
            self._start_from_lowest_loss()
        self.finetuning = True

        def after_validation(epoch_idx, valid_score):
            self.last_epoch = epoch_idx
            self._save_resume_point(epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)
        self.finished = True
        self._save_resume_point(self.last_epoch)  # now marked finished
        if self.rank == 0 and os.path.isfile(self.saved_model_file) and os.path.getsize(self.saved_model_file) == 0:
            os.remove(self.saved_model_file)  # nothing was saved (saved=False or no epoch): release the name
        if self.world > 1:
            dist.barrier()  # rank 0's best checkpoint is on disk before any rank loads it for testing
        return result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's evaluation; the best model is loaded here, its checksum verified."""
        if self.world > 1:
            self.evaluator.n_users = eval_data.sample_size
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, False, None, show_progress)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress)
        self.valid_history.append(dict(valid_result))
        return valid_score, valid_result

    def _map_reduce(self, result, num_sample):
        """Metrics are already over every rank's users (``GatheredEvaluator``): nothing to average."""
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """One finetuning epoch: recommendation loss, then (optionally) the regularized content LM.

        Every parameter group's learning rate is its starting one times ``learning_rate_decay`` per
        epoch done (a function of the epoch alone, so a resumed run follows the same schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * self.learning_rate_decay**epoch_idx
        rec_loss, rec_reg = self._run_pass("recommendation", self.optimizer, epoch_idx, show_progress)
        if not (self.finetune_content and len(self.model.documents.content)):
            return rec_loss + rec_reg
        content_loss, content_reg = self._run_pass("content", self.optimizer, epoch_idx, show_progress)
        return rec_loss + rec_reg, content_loss + content_reg
