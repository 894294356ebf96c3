"""The explainer's trainer: a MONAI ``Trainer`` that alternates discriminator and generator updates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from torch import nn

from monai_exaggeration.distributed import unwrap
from monai_exaggeration.engines.sampling import sample_target_bins
from monai_exaggeration.losses import ExaggerationLoss, MaskProvider

__all__ = ["ExaggerationTrainer"]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata (MetaTensor) for speed inside the training step."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class ExaggerationTrainer(Trainer):
    """Train G (and D) of progressive exaggeration against a frozen black-box classifier.

    Every iteration: one discriminator update (hinge loss; real images with their source bin,
    generated images with their target bin). Every ``n_critic``-th iteration: one generator update
    (adversarial + classifier consistency + identity/cycle reconstruction, see
    :class:`~monai_exaggeration.losses.ExaggerationLoss`). Batches need ``image`` (B, 1, H, W) in
    [-1, 1], ``source_bin`` (B,) and ``source_posterior`` (B,) (see
    :func:`~monai_exaggeration.engines.with_source_posteriors`), and ``label`` for calibrated sampling.

    ``engine.state.output`` is a dict of floats: ``d_loss``, ``d_real``, ``d_fake`` and the latest
    generator terms ``g_adv``, ``g_cls``, ``g_cls_cycle``, ``g_identity``, ``g_cycle``, ``g_loss``.
    ``max_iterations`` stops training after that many iterations in total (resumed runs included).

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
        self.last_generator_terms: dict[str, float] = {}
        if max_iterations is not None:
            self.add_event_handler(Events.ITERATION_COMPLETED, self._stop_at, max_iterations)

    @staticmethod
    def _stop_at(engine: Engine, max_iterations: int) -> None:
        if engine.state.iteration >= max_iterations:
            engine.terminate()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=torch.device(self.state.device).type, enabled=bool(self.amp))

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _masks(self, batch: dict, images: torch.Tensor) -> torch.Tensor | None:
        if self.mask_provider is None:
            return None
        if hasattr(self.mask_provider, "update"):  # masks stored with the dataset travel in the batch
            self.mask_provider.update(batch)
        return self.mask_provider(images)

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, float]:
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

        # Discriminator: every iteration.
        with self._autocast():
            with torch.no_grad():
                fake = self.generator(x, target_bins)
            d_terms = self.loss_function.discriminator_terms(
                self.discriminator(x, source_bins), self.discriminator(fake.detach(), target_bins)
            )
        self._step(d_terms["total"], self.d_optimizer)

        # Generator: every n_critic-th iteration (D frozen meanwhile to skip its weight gradients).
        if engine.state.iteration % self.n_critic == 0:
            critic = unwrap(self.discriminator)  # frozen here: no DDP gradient synchronisation to wait for
            self.discriminator.requires_grad_(False)
            try:
                with self._autocast():
                    generated = self.generator(x, target_bins)
                    g_terms = self.loss_function.generator_terms(
                        x=x,
                        generated=generated,
                        target_bins=target_bins,
                        fake_scores=critic(generated, target_bins),
                        classifier=self.classifier,
                        identity=self.generator(x, source_bins),
                        cycled=self.generator(generated, source_bins),
                        masks=self._masks(batchdata, x),
                        source_posterior=source_posterior,
                    )
                self._step(g_terms["total"], self.g_optimizer)
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
