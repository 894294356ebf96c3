"""The explainer's trainer: a MONAI ``Trainer`` that alternates discriminator and generator updates."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.engines.workflow import Workflow
from monai.engines.utils import default_prepare_batch
from torch import nn

from monai_exaggeration.distributed import unwrap
from monai_exaggeration.engines.sampling import sample_target_bins
from monai_exaggeration.engines.series import transfer_frame
from monai_exaggeration.losses import ExaggerationLoss, MaskProvider, l1_reconstruction
from monai_exaggeration.networks.explainer_file import COMPOSITIONS

__all__ = ["ExaggerationTrainer", "TrainingState"]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata (MetaTensor) for speed inside the training step."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class TrainingState:
    """What a checkpoint needs beyond networks, optimisers and the engine: the AMP gradient scalers
    (one per optimiser) and the training seconds accumulated over all sittings.

    A ``state_dict``/``load_state_dict`` object for MONAI's ``CheckpointSaver``/``CheckpointLoader``
    (``train#trainer.training_state`` in the bundle's ``checkpoint_dict``).
    """

    def __init__(self, g_scaler: torch.amp.GradScaler, d_scaler: torch.amp.GradScaler) -> None:
        self.g_scaler = g_scaler
        self.d_scaler = d_scaler
        self.seconds_before = 0.0  # training seconds of earlier sittings (restored from the checkpoint)
        self.sitting_start: float | None = None

    @property
    def seconds(self) -> float:
        """Training seconds so far, all sittings together."""
        now = 0.0 if self.sitting_start is None else time.perf_counter() - self.sitting_start
        return self.seconds_before + now

    def state_dict(self) -> dict[str, Any]:
        return {
            "g_scaler": self.g_scaler.state_dict() if self.g_scaler.is_enabled() else {},
            "d_scaler": self.d_scaler.state_dict() if self.d_scaler.is_enabled() else {},
            "seconds": float(self.seconds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("g_scaler", "d_scaler"):
            scaler, saved = getattr(self, name), state.get(name) or {}
            if scaler.is_enabled() and saved:
                scaler.load_state_dict(saved)
        self.seconds_before = float(state.get("seconds", 0.0))
        if self.sitting_start is not None:
            self.sitting_start = time.perf_counter()


class ExaggerationTrainer(Trainer):
    """Train G (and D) of progressive exaggeration against a frozen black-box classifier.

    Every iteration: one discriminator update (hinge loss; real images with their source bin,
    generated images with their target bin). Every ``n_critic``-th iteration: one generator update
    (adversarial + classifier consistency + identity/cycle reconstruction, see
    :class:`~monai_exaggeration.losses.ExaggerationLoss`). Batches need ``image`` (B, 1, H, W) in
    [-1, 1], ``source_bin`` (B,) and ``source_posterior`` (B,) (see
    :func:`~monai_exaggeration.engines.with_source_posteriors`), and ``label`` for calibrated sampling.

    Options beyond the paper (each off by default):

    * ``composition="transfer"`` ("train what you ship"): the classifier and the discriminator see
      the frame inference writes, x + G(x, b_t) - G(x, b_src) (exactly x where b_t = b_src), not
      G(x, b_t); the reconstruction and cycle terms are unchanged. G(x, b_t) and G(x, b_src) are
      computed in one batch, so they share batch-norm statistics as the frames of a series do.
    * ``warmup_iterations``: the first iterations train G alone as a conditional autoencoder
      (L1 between x and G(x, b) for random b; no D, no classifier), a cheap warm start.
    * ``change_region``: a callable giving, for the source images, where the change may happen
      (e.g. :class:`~monai_exaggeration.losses.DilatedRegion` around the heart); the loss's
      ``lambda_change`` term penalises the change outside it.
    * ``max_seconds``: stop after this many training seconds (all sittings together, so a resumed
      run honours the same budget); used for equal-budget ablations.

    AMP (``amp=True``; the bundle turns it on when CUDA is available) uses one ``GradScaler`` per
    optimiser, each stepped once per update of its optimiser; both live in ``training_state`` and
    belong in the checkpoint (``checkpoint_dict`` of ``train.json``), so a resumed run keeps its scales.

    ``engine.state.output`` is a dict of floats: ``d_loss``, ``d_real``, ``d_fake`` and the latest
    generator terms ``g_adv``, ``g_cls``, ``g_cls_cycle``, ``g_identity``, ``g_cycle``, ``g_change``,
    ``g_loss`` (``g_warmup`` during the warm start).
    ``max_iterations`` stops training after that many iterations in total (resumed runs included);
    ``final_iteration`` is True while the handlers of the last iteration run.

    Under ``torchrun`` G and D may be ``DistributedDataParallel`` wrappers (see
    ``bundles/cxr/configs/multi_gpu_train.json``): their gradients are averaged across ranks. The
    generator step scores G's images with the unwrapped, frozen D, so D's wrapper never waits for
    gradients that a frozen D does not produce. The classifier is never wrapped.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        generator: nn.Module,
        discriminator: nn.Module,
        classifier: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        loss_function: ExaggerationLoss,
        n_critic: int = 5,
        target_sampling: str = "uniform",
        mask_provider: MaskProvider | None = None,
        max_iterations: int | None = None,
        composition: str = "generated",
        warmup_iterations: int = 0,
        change_region: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_seconds: float | None = None,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if hasattr(train_data_loader, "__len__") and len(train_data_loader) == 0:
            dataset = getattr(train_data_loader, "dataset", ())
            replicas = getattr(getattr(train_data_loader, "sampler", None), "num_replicas", 1)
            per_process = f", {len(dataset) // max(1, replicas)} per process of {replicas}" if replicas > 1 else ""
            raise ValueError(
                f"the training set ({len(dataset)} images{per_process}) gives no complete batch of "
                f"{getattr(train_data_loader, 'batch_size', '?')}: lower batch_size or add images"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
            **kwargs,
        )
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
        if warmup_iterations < 0:
            raise ValueError(f"warmup_iterations must be >= 0, got {warmup_iterations}")
        self.generator = generator
        self.discriminator = discriminator
        self.classifier = classifier
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss_function = loss_function
        self.num_bins = loss_function.num_bins
        self.n_critic = n_critic
        self.target_sampling = target_sampling
        self.mask_provider = mask_provider
        self.composition = composition
        self.warmup_iterations = int(warmup_iterations)
        self.change_region = change_region
        self.last_generator_terms: dict[str, float] = {}
        device_type = torch.device(device).type
        self.g_scaler = torch.amp.GradScaler(device_type, enabled=bool(amp))
        self.d_scaler = torch.amp.GradScaler(device_type, enabled=bool(amp))
        self.training_state = TrainingState(self.g_scaler, self.d_scaler)
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        #: True from the end of the step of the run's last iteration (max_iterations or the time budget
        #: reached), so ITERATION_COMPLETED handlers (e.g. the loss log) can tell it apart.
        self.final_iteration = False
        #: Set by :func:`~monai_exaggeration.engines.attach_resume` when the checkpoint already reached the
        #: budget: ``run()`` then returns at once, writing nothing.
        self.already_trained: Path | None = None
        self.add_event_handler(Events.STARTED, self._start_sitting)
        if self.max_iterations is not None or self.max_seconds is not None:
            self.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_done)

    def run(self) -> None:  # type: ignore[override]
        """Train (continuing from the current state). MONAI's ``Trainer.run`` would add one shared
        CUDA scaler; this trainer keeps its own pair (``g_scaler``, ``d_scaler``)."""
        if self.already_trained is not None:
            return
        self.scaler = None
        Workflow.run(self)

    def _start_sitting(self, engine: Engine) -> None:
        self.training_state.sitting_start = time.perf_counter()
        self.final_iteration = False

    def _budget_reached(self) -> str | None:
        if self.max_iterations is not None and self.state.iteration >= self.max_iterations:
            return "iterations"
        if self.max_seconds is not None and self.training_state.seconds >= self.max_seconds:
            return "seconds"
        return None

    def _stop_when_done(self, engine: Engine) -> None:
        if not self.final_iteration:
            return
        if self._budget_reached() != "iterations" and self.max_seconds is not None:
            engine.logger.info("time budget of %.0f s reached at iteration %d", self.max_seconds, engine.state.iteration)
        engine.terminate()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=torch.device(self.state.device).type, enabled=bool(self.amp))

    @staticmethod
    def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _masks(self, batch: dict, images: torch.Tensor) -> torch.Tensor | None:
        if self.mask_provider is None:
            return None
        if hasattr(self.mask_provider, "update"):  # masks stored with the dataset travel in the batch
            self.mask_provider.update(batch)
        return self.mask_provider(images)

    def frames(
        self, x: torch.Tensor, target_bins: torch.Tensor, source_bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(frame shown to f and D, G(x, b_t), G(x, b_src)) under the trainer's composition.

        ``generated``: the frame is G(x, b_t) and G(x, b_src) is None (computed by the caller if needed).
        ``transfer``: both come from one batch and the frame is x where b_t = b_src.
        """
        if self.composition == "generated":
            generated = self.generator(x, target_bins)
            return generated, generated, None
        both = self.generator(torch.cat([x, x]), torch.cat([target_bins, source_bins]))
        generated, reconstruction = both.chunk(2)
        frame = transfer_frame(x, generated, reconstruction)
        frame = torch.where((target_bins == source_bins)[:, None, None, None], x, frame)
        return frame, generated, reconstruction

    def _warmup(self, x: torch.Tensor, target_bins: torch.Tensor) -> dict[str, float]:
        with self._autocast():
            loss = l1_reconstruction(x, self.generator(x, target_bins))
        self._step(loss, self.g_optimizer, self.g_scaler)
        return {"g_warmup": float(loss.detach())}

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, float]:
        output = self._train_step(engine, batchdata)
        self.final_iteration = self._budget_reached() is not None
        return output

    def _train_step(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, float]:
        device = engine.state.device
        x = _plain(batchdata["image"]).to(device, non_blocking=engine.non_blocking)
        source_bins = torch.as_tensor(batchdata["source_bin"], device=device).long().reshape(-1)
        source_posterior = torch.as_tensor(batchdata["source_posterior"], device=device).float().reshape(-1)
        labels = batchdata.get("label")
        target_bins = sample_target_bins(
            x.shape[0], self.num_bins, self.target_sampling, labels=None if labels is None else _plain(labels), device=device
        )
        self.generator.train()
        self.discriminator.train()
        if engine.state.iteration <= self.warmup_iterations:
            return self._warmup(x, target_bins)

        # Discriminator: every iteration.
        with self._autocast():
            with torch.no_grad():
                fake, _, _ = self.frames(x, target_bins, source_bins)
            d_terms = self.loss_function.discriminator_terms(
                self.discriminator(x, source_bins), self.discriminator(fake.detach(), target_bins)
            )
        self._step(d_terms["total"], self.d_optimizer, self.d_scaler)

        # Generator: every n_critic-th iteration (D frozen meanwhile to skip its weight gradients).
        if engine.state.iteration % self.n_critic == 0:
            critic = unwrap(self.discriminator)  # frozen here: no DDP gradient synchronisation to wait for
            self.discriminator.requires_grad_(False)
            try:
                with self._autocast():
                    frame, generated, reconstruction = self.frames(x, target_bins, source_bins)
                    if reconstruction is None:
                        reconstruction = self.generator(x, source_bins)
                    region = None if self.change_region is None else self.change_region(x)
                    g_terms = self.loss_function.generator_terms(
                        x=x,
                        generated=frame,
                        target_bins=target_bins,
                        fake_scores=critic(frame, target_bins),
                        classifier=self.classifier,
                        identity=reconstruction,
                        cycled=self.generator(generated, source_bins),
                        masks=self._masks(batchdata, x),
                        source_posterior=source_posterior,
                        change=generated - reconstruction,
                        change_region=region,
                    )
                self._step(g_terms["total"], self.g_optimizer, self.g_scaler)
            finally:
                self.discriminator.requires_grad_(True)
            self.last_generator_terms = {
                f"g_{name}" if name != "total" else "g_loss": float(value.detach()) for name, value in g_terms.items()
            }
        return {
            "d_loss": float(d_terms["total"].detach()),
            "d_real": float(d_terms["real"].detach()),
            "d_fake": float(d_terms["fake"].detach()),
            **self.last_generator_terms,
        }
