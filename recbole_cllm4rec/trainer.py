"""CLLM4Rec's two-stage schedule on top of RecBole's ``Trainer``.

1. Pretraining, mutually regularized (lr ``pretrain_learning_rate``): ``content_warmup_epochs``
   epochs of content passes alone, then ``pretrain_epochs`` epochs that each run one collaborative
   pass and one content pass, each regularized toward the other side's (frozen for that step)
   embeddings.
2. Finetuning, recommendation-oriented (lr ``learning_rate``, ``epochs``): RecBole's own ``fit``
   loop (validation, early stopping, checkpoints); each epoch is one recommendation pass and, if
   ``finetune_content``, one regularized content pass.

A pass is one epoch over one corpus (collaborative, content or recommendation documents), in
batches packed by length to ``train_batch_tokens`` padded tokens (``batches``), so little compute
goes to padding and short documents still fill a batch. Every pass seeds torch's RNG from (seed,
stage, pass, epoch). Under torch.distributed each rank runs its share of every batch
(``distributed``); only rank 0 writes files.

Checkpoints (``checkpoint``) hold only what trains (the four ID tables, the optimizer) plus stage,
epoch, RNG states, the backbone's fingerprint and the split fingerprint. The run's files
(``runfiles``): ``<run>.pth`` is the best model (RecBole's), ``<run>-last.pth`` the resume point
written after every epoch of either stage (with ``finetune_start: lowest_loss``, ``<run>-pretrain.pth``
holds each side's tables of its lowest-loss pretraining pass). A resume point must match the run's
model, dataset and split, and its settings but the few a resume may change (``checkpoint.RESUME_MAY_CHANGE``);
one of a finished run only re-tests its best model.
"""
from __future__ import annotations

import math
import os
import zlib
from time import time

import torch
import torch.distributed as dist
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_cllm4rec.batches import documents_per_batch, token_budget_batches
from recbole_cllm4rec.checkpoint import atomic_save, load_checkpoint, resume_mismatch, resume_setting_changes, rng_state, set_rng_state
from recbole_cllm4rec.config_rules import Rule, check_config_values
from recbole_cllm4rec.distributed import GatheredEvaluator, WithoutDDP, all_reduce_gradients
from recbole_cllm4rec.runfiles import RunLock, beside, lock_run_files, reserve_run_files, run_file


class CLLM4RecTrainer(Trainer, WithoutDDP):
    # the schedule's keys of properties/CLLM4Rec.yaml (the model's are CLLM4Rec.CONFIG_RULES)
    CONFIG_RULES = {
        "content_warmup_epochs": Rule(int, low=0),
        "pretrain_epochs": Rule(int, low=0),
        "pretrain_learning_rate": Rule(float, low=0),
        "learning_rate_decay": Rule(float, low=0, high=1),
        "finetune_content": Rule(bool),
        "finetune_start": Rule(str, choices=("last", "lowest_loss")),
        "train_batch_tokens": Rule(int, low=1),
        "train_batch_documents": Rule(int, low=1, optional=True),
    }

    def __init__(self, config, model, split_fingerprint: str | None = None):
        """``split_fingerprint``: the split's, stored in every checkpoint and checked on resume."""
        check_config_values(config, self.CONFIG_RULES)
        distributed = not config["single_spec"]
        # RecBole's ensure_dir checks, then creates: ranks would race on it
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.split_fingerprint = split_fingerprint
        self.loss_history: list[tuple[str, str, int, float, float]] = []  # (stage, pass, epoch, loss, reg)
        self.stage_seconds: dict[str, float] = {}  # wall time per "stage/pass", summed over epochs
        self.valid_history: list[dict] = []  # validation metrics after each finetuning epoch (the curve)
        self.plain_prompt_loss: float | None = None  # the content corpus read by the plain LM, once
        self.pretrain_epochs = config["pretrain_epochs"]
        self.content_warmup_epochs = config["content_warmup_epochs"]
        self.finetune_content = config["finetune_content"]
        self.learning_rate_decay = config["learning_rate_decay"]
        self.finetune_start = config["finetune_start"]
        # lowest_loss: per side, (pretraining epoch, loss + mutual reg) of its lowest pretraining pass;
        # that pass's tables are in lowest_loss_file
        self.lowest_pretrain_loss: dict[str, tuple[int, float]] = {}
        # users with at least one training item: the collaborative and recommendation documents
        self.train_users = torch.nonzero(model.documents.history_len > 0).squeeze(1).cpu()
        # the finetuning loss is divided by this constant: every user weighs the same in any batch
        lengths = model.documents.lengths("recommendation", self.train_users.to(self.device)).cpu()
        self.users_per_batch = documents_per_batch(lengths, config["train_batch_tokens"], config["train_batch_documents"])
        self.finished = False  # a resumed run that had already finished: fit only re-tests it
        self.last_epoch = -1  # the last finetuning epoch validated (and saved as the resume point)
        self.resumed = False  # a resumed run keeps the files it continues; a new one reserves its own in fit
        self.pretrain_optimizer = self._build_optimizer(learning_rate=config["pretrain_learning_rate"])
        self.pretrain_start = 0  # pretraining epochs already done (warm-up included), set by resume
        self.stage = "pretrain"  # then "finetune"
        self.lock: RunLock | None = None  # rank 0's, held from the files' reservation (or the resume) to the test
        self.files_locked = False
        self.rank_evaluator = self.evaluator  # this rank's users; gathered over ranks in evaluate
        if self.world > 1:
            # one run, one starting point (rank 0's ID tables)
            for parameter in model.trainable_parameters():
                dist.broadcast(parameter.data, src=0)

    @property
    def resume_file(self) -> str:
        return run_file(self.saved_model_file, "-last.pth")

    @property
    def lowest_loss_file(self) -> str:
        """``<run>-pretrain.pth``: each side's tables after its lowest-loss pretraining pass."""
        return run_file(self.saved_model_file, "-pretrain.pth")

    # ------------------------------------------------------------------ checkpoints
    def _reserve_files(self) -> None:
        self.saved_model_file, self.lock = reserve_run_files(
            self.saved_model_file, self.config["checkpoint_dir"], self.config["model"], self.rank, self.world
        )
        self.files_locked = True

    def _lock_files(self) -> None:
        if self.files_locked:  # the same answer on every rank: no rank waits in a broadcast alone
            return
        self.lock = lock_run_files(self.saved_model_file, self.rank, self.world)
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
            "stage": self.stage,
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
        optimizer = self.optimizer if self.stage == "finetune" else self.pretrain_optimizer
        atomic_save(self._state(epoch, optimizer), self.resume_file)

    def resume_checkpoint(self, resume_file):
        """Continue after the last completed epoch of whichever stage was running."""
        checkpoint = load_checkpoint(str(resume_file), self.device)
        if "rng" not in checkpoint:
            raise ValueError(f"{resume_file} is a best-model checkpoint: resume from the run's -last.pth file")
        mismatch = resume_mismatch(checkpoint, self.config["model"], self.config["dataset"], self.split_fingerprint)
        refusal, notes = resume_setting_changes(checkpoint, self.config)
        if mismatch or refusal:
            raise ValueError(f"cannot resume from {resume_file}: {mismatch or refusal}")
        for note in notes:
            self.logger.warning(note)
        self.model.load_state_dict(checkpoint["state_dict"])  # refuses another backbone
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.saved_model_file = beside(checkpoint["best_model_file"], str(resume_file))
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
    def pass_documents(self, pass_name: str, regularize: bool = True):
        """(document units, their token counts, the loss step) of a pass: content docs or training users."""
        model, shard = self.model, (self.rank, self.world)
        if pass_name == "content":
            units = torch.arange(len(model.documents.content))
            step = lambda batch: model.content_lm_loss(batch, shard, regularize=regularize)  # noqa: E731
        elif pass_name == "collaborative":
            units = self.train_users
            step = lambda batch: model.collaborative_lm_loss(batch, shard)  # noqa: E731
        else:
            units = self.train_users
            step = lambda batch: model.recommendation_loss(batch, self.users_per_batch, shard)  # noqa: E731
        return units, model.documents.lengths(pass_name, units.to(self.device)).cpu(), step

    def pass_batches(self, pass_name: str, regularize: bool = True):
        """One epoch's batches of a pass and its loss step: packed by length to ``train_batch_tokens``
        padded tokens, or, with ``train_batch_documents`` N, N documents in random order per step (the
        public code's 20: each padded to its batch's longest)."""
        units, lengths, step = self.pass_documents(pass_name, regularize)
        per_step = self.config["train_batch_documents"]
        if per_step:
            return list(units[torch.randperm(len(units))].split(per_step)), step
        return [units[b] for b in token_budget_batches(lengths, self.config["train_batch_tokens"])], step

    def _seed_pass(self, pass_name: str, epoch_idx: int) -> None:
        """Seed torch's RNG from (seed, stage, pass, epoch): batches, item orders and masks of an epoch
        are the same on every rank, in one process or several, and after a resume."""
        torch.manual_seed(zlib.crc32(f"{self.config['seed']}/{self.stage}/{pass_name}/{epoch_idx}".encode()))

    def train_step(self, batch: torch.Tensor, step, optimizer) -> torch.Tensor | None:
        """One optimizer step on ``batch`` (loss step from :meth:`pass_batches`); returns (loss, reg)
        summed over ranks, or ``None`` (and no update) when they or the gradients are not finite."""
        optimizer.zero_grad()
        if len(batch) > self.rank:  # a batch with fewer documents than ranks leaves some ranks idle
            loss, reg = step(batch.to(self.device))
            (loss + reg).backward()
            losses = torch.stack([loss.detach(), reg.detach()]).double().cpu()
        else:
            losses = torch.zeros(2, dtype=torch.float64)
        if self.world > 1:
            all_reduce_gradients(self.model.trainable_parameters())
            dist.all_reduce(losses)
        grads = [p.grad.isfinite().all() for p in self.model.trainable_parameters() if p.grad is not None]
        if not torch.isfinite(losses).all() or (grads and not torch.stack(grads).all()):
            return None
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), **self.clip_grad_norm)
        optimizer.step()
        return losses

    def _run_pass(self, pass_name: str, optimizer, epoch_idx: int, show_progress: bool, regularize: bool = True):
        """One epoch of ``pass_name`` (collaborative / content / recommendation); returns (loss, reg) means."""
        model = self.model
        model.train()
        start = time()
        self._seed_pass(pass_name, epoch_idx)
        batches, step = self.pass_batches(pass_name, regularize)
        if show_progress:
            batches = tqdm(batches, total=len(batches), ncols=100, desc=set_color(f"{pass_name:>14} {epoch_idx:>3}", "pink"))
        totals = torch.zeros(2, dtype=torch.float64)
        for batch_idx, batch in enumerate(batches):
            losses = self.train_step(batch, step, optimizer)
            if losses is None:
                raise ValueError(
                    f"{pass_name} loss or its gradient is not finite in epoch {epoch_idx}, batch {batch_idx}: training stopped; "
                    f"the last completed epoch is in {self.resume_file}"
                )
            totals += losses
        loss, reg = (totals / max(len(batches), 1)).tolist()
        self.loss_history.append((self.stage, pass_name, epoch_idx, loss, reg))
        key = f"{self.stage}/{pass_name}"
        self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + time() - start
        return loss, reg

    @torch.no_grad()
    def content_eval_loss(self, plain: bool = False) -> float:
        """The content LM's loss on its whole corpus, without training: the mean over the content
        pass's batches of their loss per text token, as its training loss is reported. ``plain``: the
        frozen LM's own, with the words ``user`` / ``item`` in place of the ID tokens."""
        self.model.eval()
        self._seed_pass("content", -1)
        batches, _ = self.pass_batches("content", regularize=False)
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

    def _log_pass(self, label: str, pass_name: str, epoch_idx: int, start: float, losses: tuple[float, float]) -> None:
        """A pretraining pass in the log (``label``: content warm-up or pretraining) and in TensorBoard
        (finetuning epochs go through RecBole's); a content pass beside the plain prompt's loss and a
        uniform guess's (nats per text token)."""
        elapsed = time() - start
        self.tensorboard.add_scalar(f"Pretrain/{pass_name} loss", losses[0], epoch_idx)
        self.tensorboard.add_scalar(f"Pretrain/{pass_name} mutual reg", losses[1], epoch_idx)
        references = ""
        if pass_name == "content":
            plain, uniform = self.content_reference_loss(), math.log(self.model.layout.vocab_size)
            self.tensorboard.add_scalar("Pretrain/content loss, plain prompt", plain, epoch_idx)
            references = f", {set_color('plain prompt', 'blue')}: {plain:.4f}, {set_color('uniform', 'blue')}: {uniform:.4f}"
        self.logger.info(
            set_color(f"{label} epoch {epoch_idx} {pass_name}", "green")
            + f" [{set_color('time', 'blue')}: {elapsed:.2f}s, "
            + f"{set_color('loss', 'blue')}: {losses[0]:.4f}, {set_color('mutual reg', 'blue')}: {losses[1]:.4f}"
            + references + "]"
        )

    # ------------------------------------------------------------------ stage 1
    def pretrain(self, show_progress: bool = False) -> None:
        """Content warm-up, then alternating collaborative / content passes with mutual regularization.

        Pretraining epochs are numbered across warm-up and alternation (warm-up first); a resume
        point is saved after each.
        """
        has_content = len(self.model.documents.content) > 0
        if not has_content and (self.pretrain_epochs or self.content_warmup_epochs):
            self.logger.warning("no content documents: pretraining runs the collaborative LM only")
        if has_content and self.pretrain_start < self.content_warmup_epochs + self.pretrain_epochs:
            self.content_reference_loss()  # before any step: with LoRA, the adapters start as no-ops
        warmup = self.content_warmup_epochs
        for epoch_idx in range(self.pretrain_start, warmup + self.pretrain_epochs):
            if epoch_idx < warmup:
                passes, label = (("content",) if has_content else ()), "content warm-up"
            else:
                passes, label = (("collaborative", "content") if has_content else ("collaborative",)), "pretraining"
            for pass_name in passes:
                start = time()
                losses = self._run_pass(
                    pass_name, self.pretrain_optimizer, epoch_idx, show_progress, regularize=epoch_idx >= warmup
                )
                self._log_pass(label, pass_name, epoch_idx, start, losses)
                if self.finetune_start == "lowest_loss":
                    self._keep_if_lowest(pass_name, epoch_idx, sum(losses))
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
        self.stage = "finetune"

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
        """RecBole's evaluation (over every rank's users); the best model is loaded here, its checksum verified."""
        if self.world > 1:
            self.evaluator = GatheredEvaluator(self.rank_evaluator, eval_data.sample_size, self.rank, self.world)
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
        """One finetuning epoch: a recommendation pass, then (optionally) a regularized content pass.

        Every parameter group's learning rate is its starting one times ``learning_rate_decay`` per
        epoch done (a function of the epoch alone, so a resumed run follows the same schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * self.learning_rate_decay**epoch_idx
        rec_loss, rec_reg = self._run_pass("recommendation", self.optimizer, epoch_idx, show_progress)
        if not (self.finetune_content and len(self.model.documents.content)):
            return rec_loss + rec_reg
        content_loss, content_reg = self._run_pass("content", self.optimizer, epoch_idx, show_progress)
        return rec_loss + rec_reg, content_loss + content_reg
