"""CLLM4Rec's two-stage schedule on top of RecBole's ``Trainer``.

1. Mutually-regularized pretraining (lr ``pretrain_learning_rate``):
   ``content_warmup_epochs`` epochs of the content LM alone, then ``pretrain_epochs`` epochs that
   each run one pass of the collaborative LM and one pass of the content LM, each regularized
   toward the other side's (frozen for that step) embeddings.
2. Recommendation-oriented finetuning (lr ``learning_rate``, ``epochs``): RecBole's own ``fit``
   loop (validation, early stopping, checkpoints); each epoch is one pass of the masked-history
   recommendation loss and, if ``finetune_content``, one regularized content LM pass.

Batches are built from the model's tensors, bucketed by length so little compute goes to padding.
"""
from __future__ import annotations

from time import time

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm


def length_bucketed_batches(lengths: torch.Tensor, batch_size: int, bucket_batches: int = 50) -> list[torch.Tensor]:
    """Shuffle, then sort within windows of ``bucket_batches`` batches by length, then shuffle batches.

    Every index appears exactly once; documents of similar length share a batch, so padding is
    small while the order stays random from epoch to epoch (torch's global RNG, seeded by RecBole).
    """
    order = torch.randperm(len(lengths))
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[lengths[chunk].argsort(descending=True, stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches)).tolist()]


class CLLM4RecTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.pretrain_epochs = config["pretrain_epochs"]
        self.content_warmup_epochs = config["content_warmup_epochs"]
        self.pretrain_learning_rate = config["pretrain_learning_rate"]
        self.finetune_content = config["finetune_content"]
        # users with at least one training item: the collaborative and recommendation documents
        self.train_users = torch.nonzero(model.history_len > 0).squeeze(1).cpu()

    def _build_optimizer(self, **kwargs):
        """The optimizer sees only the four ID tables, never the frozen backbone."""
        kwargs.setdefault("params", [p for p in self.model.parameters() if p.requires_grad])
        return super()._build_optimizer(**kwargs)

    # ------------------------------------------------------------------ one pass over a corpus
    def _run_pass(self, stage: str, optimizer, epoch_idx: int, show_progress: bool, regularize: bool = True):
        """One epoch of ``stage`` (collaborative / content / recommendation); returns (loss, reg) means."""
        model = self.model
        model.train()
        if stage == "content":
            units = torch.arange(len(model.content_docs))
            lengths = model.content_docs.length
            step = lambda batch: model.content_lm_loss(batch, regularize=regularize)  # noqa: E731
        else:
            units = self.train_users
            lengths = model.history_len[units].cpu()
            step = getattr(model, f"{stage}_lm_loss" if stage == "collaborative" else "recommendation_loss")
        batches = [units[b] for b in length_bucketed_batches(lengths, self.config["train_batch_size"])]
        if show_progress:
            batches = tqdm(batches, total=len(batches), ncols=100, desc=set_color(f"{stage:>14} {epoch_idx:>3}", "pink"))
        total_loss = total_reg = 0.0
        for batch in batches:
            optimizer.zero_grad()
            loss, reg = step(batch.to(self.device))
            if torch.isnan(loss) or torch.isnan(reg):
                raise ValueError(f"{stage} loss is nan in epoch {epoch_idx}")
            (loss + reg).backward()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], **self.clip_grad_norm)
            optimizer.step()
            total_loss += loss.item()
            total_reg += reg.item()
        n = max(len(batches), 1)
        return total_loss / n, total_reg / n

    def _log_pass(self, phase: str, stage: str, epoch_idx: int, start: float, losses: tuple[float, float]) -> None:
        self.logger.info(
            set_color(f"{phase} epoch {epoch_idx} {stage}", "green")
            + f" [{set_color('time', 'blue')}: {time() - start:.2f}s, "
            + f"{set_color('loss', 'blue')}: {losses[0]:.4f}, {set_color('mutual reg', 'blue')}: {losses[1]:.4f}]"
        )

    # ------------------------------------------------------------------ stage 1
    def pretrain(self, show_progress: bool = False) -> None:
        """Content warm-up, then alternating collaborative / content epochs with mutual regularization."""
        if len(self.model.content_docs) == 0 and (self.pretrain_epochs or self.content_warmup_epochs):
            self.logger.warning("no content documents: pretraining runs the collaborative LM only")
        optimizer = self._build_optimizer(learning_rate=self.pretrain_learning_rate)
        has_content = len(self.model.content_docs) > 0
        for epoch_idx in range(self.content_warmup_epochs if has_content else 0):
            start = time()
            losses = self._run_pass("content", optimizer, epoch_idx, show_progress, regularize=False)
            self._log_pass("content warm-up", "content", epoch_idx, start, losses)
        for epoch_idx in range(self.pretrain_epochs):
            for stage in ("collaborative", "content") if has_content else ("collaborative",):
                start = time()
                losses = self._run_pass(stage, optimizer, epoch_idx, show_progress)
                self._log_pass("pretraining", stage, epoch_idx, start, losses)

    # ------------------------------------------------------------------ stage 2 (RecBole's loop)
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.pretrain(show_progress=show_progress)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """One finetuning epoch: recommendation loss, then (optionally) the regularized content LM."""
        rec_loss, rec_reg = self._run_pass("recommendation", self.optimizer, epoch_idx, show_progress)
        if not (self.finetune_content and len(self.model.content_docs)):
            return rec_loss + rec_reg
        content_loss, content_reg = self._run_pass("content", self.optimizer, epoch_idx, show_progress)
        return rec_loss + rec_reg, content_loss + content_reg
