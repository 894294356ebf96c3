"""The explainer's trainer: a MONAI ``Trainer`` that alternates discriminator and generator updates.

Written as MONAI writes its GAN trainer (``monai.engines.AdversarialTrainer``): the generator runs
through an inferer, each optimiser has its own AMP ``GradScaler``, and every phase of an update fires
an event of :class:`ExaggerationIterationEvents` that handlers can attach to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, EventEnum, Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from monai_exaggeration.distributed import unwrap
from monai_exaggeration.engines.sampling import sample_target_bins
from monai_exaggeration.losses import ExaggerationLoss, MaskProvider, l1_reconstruction
from monai_exaggeration.methods.series import transfer_frame
from monai_exaggeration.networks.explainer_file import COMPOSITIONS

__all__ = ["ExaggerationIterationEvents", "ExaggerationTrainer", "TrainingState"]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata (MetaTensor) for speed inside the training step."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class ExaggerationIterationEvents(EventEnum):
    """Events fired inside one iteration of :class:`ExaggerationTrainer` (registered on every trainer).

    A discriminator update fires ``D_FORWARD_COMPLETED`` (D has scored the real and the generated
    images), ``D_LOSS_COMPLETED``, ``D_BACKWARD_COMPLETED`` (gradients computed, before the optimiser
    step) and ``D_MODEL_COMPLETED`` (D's optimiser stepped); a generator update fires the four ``G_``
    events likewise (``G_FORWARD_COMPLETED``: G's frames, reconstructions and cycles are computed).
    An adversarial iteration fires the D events, then, every ``n_critic``-th iteration, the G events;
    a warm-start iteration fires the G events only. MONAI's ``IterationEvents.MODEL_COMPLETED`` closes
    every iteration. Inside the iteration ``engine.state.output`` holds the loss terms computed so
    far as detached tensors (``d_loss``, ``d_real``, ``d_fake``, ``g_...``).
    """

    D_FORWARD_COMPLETED = "d_forward_completed"
    D_LOSS_COMPLETED = "d_loss_completed"
    D_BACKWARD_COMPLETED = "d_backward_completed"
    D_MODEL_COMPLETED = "d_model_completed"
    G_FORWARD_COMPLETED = "g_forward_completed"
    G_LOSS_COMPLETED = "g_loss_completed"
    G_BACKWARD_COMPLETED = "g_backward_completed"
    G_MODEL_COMPLETED = "g_model_completed"


#: (backward, model) events of a D update and of a G update.
_D_UPDATE = (ExaggerationIterationEvents.D_BACKWARD_COMPLETED, ExaggerationIterationEvents.D_MODEL_COMPLETED)
_G_UPDATE = (ExaggerationIterationEvents.G_BACKWARD_COMPLETED, ExaggerationIterationEvents.G_MODEL_COMPLETED)


class TrainingState:
    """What a checkpoint needs beyond networks, optimisers and the engine: the AMP gradient scalers
    (one per optimiser) and the training seconds accumulated over all sittings.

    A ``state_dict``/``load_state_dict`` object for MONAI's ``CheckpointSaver``/``CheckpointLoader``
    (``train#trainer.training_state`` in the bundle's ``checkpoint_dict``). A disabled scaler (no AMP)
    saves ``{}`` and ignores a saved state, so runs with and without AMP resume from each other.

    Args:
        g_scaler: the generator optimiser's AMP gradient scaler.
        d_scaler: the discriminator optimiser's AMP gradient scaler.
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

    As in MONAI's ``AdversarialTrainer``: G runs through ``g_inferer`` and D through ``d_inferer``;
    each optimiser has its own AMP ``GradScaler`` (``g_scaler``, ``d_scaler``, stepped once per update
    of their optimiser and kept in ``training_state``, which belongs in the checkpoint: see
    ``checkpoint_dict`` of ``bundles/cxr/configs/train.json``, so a resumed run keeps its scales); every
    phase of an update fires an event of :class:`ExaggerationIterationEvents`.

    Where training stops is defined once, by ``max_iterations`` (iterations in total, resumed runs
    included): the trainer terminates itself after that iteration, with ``final_iteration`` True while
    the handlers of that last iteration run. ``max_seconds`` adds a time budget.

    ``engine.state.output`` is a dict of floats: ``d_loss``, ``d_real``, ``d_fake`` and the latest
    generator terms ``g_adv``, ``g_cls``, ``g_cls_cycle``, ``g_identity``, ``g_cycle``, ``g_change``,
    ``g_loss`` (``g_warmup`` during the warm start).

    Under ``torchrun`` G and D may be ``DistributedDataParallel`` wrappers (see
    ``bundles/cxr/configs/multi_gpu_train.json``): their gradients are averaged across ranks. The
    generator step scores G's images with the unwrapped, frozen D, so D's wrapper never waits for
    gradients that a frozen D does not produce. The classifier is never wrapped.

    Args:
        device: where the networks and batches are.
        train_data_loader: batches of ``image``, ``source_bin``, ``source_posterior`` (and ``label``); it
            must give at least one complete batch (ValueError otherwise).
        generator: G(x, b), the conditional generator trained here.
        discriminator: D(x, b), the conditional discriminator trained here.
        classifier: the frozen black box f whose posterior the series follows (never updated).
        g_optimizer: G's optimiser.
        d_optimizer: D's optimiser.
        loss_function: the D and G loss terms; its ``num_bins`` is the number of bins N.
        max_iterations: train until this iteration (counted over all sittings); the one stop condition.
        max_epochs: MONAI ``Trainer``'s epoch limit. None (the default, and what the bundle passes):
            derived from ``max_iterations`` and the epoch length. A value that would end training
            before ``max_iterations`` is refused, so ``max_iterations`` alone decides the stop.
        n_critic: G is updated every ``n_critic``-th iteration (D every iteration).
        target_sampling: how target bins are drawn (``uniform`` or ``calibrated``, see
            :func:`~monai_exaggeration.engines.sample_target_bins`).
        mask_provider: masks for the context-aware reconstruction (CARL), or None for plain L1.
        composition: ``generated`` (the papers: f and D see G(x, b_t)) or ``transfer`` ("train what you
            ship": they see x + G(x, b_t) - G(x, b_src), exactly x where b_t = b_src; G(x, b_t) and
            G(x, b_src) come from one batch, so they share batch-norm statistics as the frames of a
            series do). The reconstruction and cycle terms are the same for both.
        warmup_iterations: the first iterations train G alone as a conditional autoencoder (L1 between x
            and G(x, b) for random b; no D, no classifier), a cheap warm start. They count towards
            ``max_iterations``.
        change_region: a callable giving, for the source images, where the change may happen (e.g.
            :class:`~monai_exaggeration.losses.DilatedRegion` around the heart); the loss's
            ``lambda_change`` term penalises the change outside it. None: no region.
        max_seconds: also stop after this many training seconds, all sittings together (saved in
            ``training_state``, so a resumed run honours the same budget); for equal-budget ablations.
        epoch_length: iterations per epoch; default ``len(train_data_loader)``.
        g_inferer: runs G's forward, ``g_inferer(x, generator, bins)``; default ``SimpleInferer()``.
        d_inferer: runs D's forward, ``d_inferer(x, discriminator, bins)``; default ``SimpleInferer()``.
        prepare_batch: MONAI's batch preparation hook, kept for the ``Trainer`` interface (the step reads
            the batch's keys itself).
        train_handlers: handlers with an ``attach(engine)`` method (logging, progress, ...).
        amp: mixed precision with one ``GradScaler`` per optimiser (the bundle sets it when CUDA is
            available).
        kwargs: further arguments of MONAI's ``Trainer`` (``non_blocking``, ``event_names``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Iterable,
        generator: nn.Module,
        discriminator: nn.Module,
        classifier: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        loss_function: ExaggerationLoss,
        max_iterations: int,
        max_epochs: int | None = None,
        n_critic: int = 5,
        target_sampling: str = "uniform",
        mask_provider: MaskProvider | None = None,
        composition: str = "generated",
        warmup_iterations: int = 0,
        change_region: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_seconds: float | None = None,
        epoch_length: int | None = None,
        g_inferer: Inferer | None = None,
        d_inferer: Inferer | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_loader(train_data_loader)
        max_iterations, epoch_length, max_epochs = _epochs(train_data_loader, max_iterations, epoch_length, max_epochs)
        _check_settings(n_critic, composition, warmup_iterations, max_seconds)
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
        self.register_events(*ExaggerationIterationEvents)
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
        if self.deforms and self.warmup_iterations:
            raise ValueError(
                "warmup_iterations is an autoencoder warm start for image generators; a deformation explainer "
                "starts from the identity already: set warmup_iterations 0"
            )
        self.g_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.d_inferer = SimpleInferer() if d_inferer is None else d_inferer
        self.last_generator_terms: dict[str, float] = {}
        device_type = torch.device(device).type
        self.g_scaler = torch.amp.GradScaler(device_type, enabled=bool(amp))
        self.d_scaler = torch.amp.GradScaler(device_type, enabled=bool(amp))
        self.training_state = TrainingState(self.g_scaler, self.d_scaler)
        self.max_iterations = max_iterations
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        #: True from the end of the step of the run's last iteration (max_iterations or the time budget
        #: reached), so ITERATION_COMPLETED handlers (e.g. the loss log) can tell it apart.
        self.final_iteration = False
        #: Set by :func:`~monai_exaggeration.engines.attach_resume` when the checkpoint already reached the
        #: budget: ``run()`` then returns at once, writing nothing.
        self.already_trained: Path | None = None
        self.add_event_handler(Events.STARTED, self._start_sitting)
        self.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_done)

    def run(self) -> None:  # type: ignore[override]
        """Train (continuing from the current state). MONAI's ``Trainer.run`` would add one shared
        CUDA scaler; this trainer keeps one per optimiser (``g_scaler``, ``d_scaler``)."""
        if self.already_trained is not None:
            return
        self.scaler = None
        Workflow.run(self)

    def _start_sitting(self, engine: Engine) -> None:
        self.training_state.sitting_start = time.perf_counter()
        self.final_iteration = False

    def _budget_reached(self) -> str | None:
        if self.state.iteration >= self.max_iterations:
            return "iterations"
        if self.max_seconds is not None and self.training_state.seconds >= self.max_seconds:
            return "seconds"
        return None

    def _stop_when_done(self, engine: Engine) -> None:
        """The one place where training stops: after the iteration that reached the budget."""
        if not self.final_iteration:
            return
        if self._budget_reached() == "seconds":
            engine.logger.info(
                "time budget of %.0f s reached at iteration %d", self.max_seconds, engine.state.iteration
            )
        engine.terminate()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=torch.device(self.state.device).type, enabled=bool(self.amp))

    def _generate(self, x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """G(x, b) through the trainer's G inferer."""
        return self.g_inferer(x, self.generator, bins)

    def _update(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        backward_completed: ExaggerationIterationEvents,
        model_completed: ExaggerationIterationEvents,
    ) -> None:
        """Backward pass and optimiser step (through the optimiser's own scaler under AMP), with their events."""
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            self.fire_event(backward_completed)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            self.fire_event(backward_completed)
            optimizer.step()
        self.fire_event(model_completed)

    def _masks(self, batch: dict, images: torch.Tensor) -> torch.Tensor | None:
        if self.mask_provider is None:
            return None
        if hasattr(self.mask_provider, "update"):  # masks stored with the dataset travel in the batch
            self.mask_provider.update(batch)
        return self.mask_provider(images)

    @property
    def deforms(self) -> bool:
        """True when the generator is a deformation explainer (its output is a displacement field)."""
        return getattr(unwrap(self.generator), "output", "image") == "deformation"

    def _deformation_frames(
        self, x: torch.Tensor, target_bins: torch.Tensor, source_bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, grid displacement, fields at b_t, fields at b_src) of the deformation explainer:
        x warped from the source bin's field to the target bin's; x itself where b_t = b_src."""
        fields_target, fields_source = self.g_inferer(x, self.generator, target_bins, source_bins).chunk(2)
        frame, ddf = unwrap(self.generator).compose(x, fields_target, fields_source)
        frame = torch.where((target_bins == source_bins)[:, None, None, None], x, frame)
        return frame, ddf, fields_target, fields_source

    def frames(
        self, x: torch.Tensor, target_bins: torch.Tensor, source_bins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(frame shown to f and D, G(x, b_t), G(x, b_src)) under the trainer's composition.

        ``generated``: the frame is G(x, b_t) and G(x, b_src) is None (computed by the caller if needed).
        ``transfer``: both come from one batch and the frame is x where b_t = b_src.
        A deformation explainer: the warped frame and the fields of both bins.
        """
        if self.deforms:
            frame, _, fields_target, fields_source = self._deformation_frames(x, target_bins, source_bins)
            return frame, fields_target, fields_source
        if self.composition == "generated":
            generated = self._generate(x, target_bins)
            return generated, generated, None
        both = self._generate(torch.cat([x, x]), torch.cat([target_bins, source_bins]))
        generated, reconstruction = both.chunk(2)
        frame = transfer_frame(x, generated, reconstruction)
        frame = torch.where((target_bins == source_bins)[:, None, None, None], x, frame)
        return frame, generated, reconstruction

    def _iteration(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, float]:
        device = engine.state.device
        x = _plain(batchdata["image"]).to(device, non_blocking=engine.non_blocking)
        source_bins = torch.as_tensor(batchdata["source_bin"], device=device).long().reshape(-1)
        source_posterior = torch.as_tensor(batchdata["source_posterior"], device=device).float().reshape(-1)
        labels = batchdata.get("label")
        target_bins = sample_target_bins(
            x.shape[0],
            self.num_bins,
            self.target_sampling,
            labels=None if labels is None else _plain(labels),
            device=device,
        )
        self.generator.train()
        self.discriminator.train()
        terms: dict[str, torch.Tensor] = {}
        engine.state.output = terms  # filled as the phases complete, for handlers of the iteration events
        if engine.state.iteration <= self.warmup_iterations:
            self._warmup_step(x, target_bins, terms)
        else:
            self._discriminator_step(x, target_bins, source_bins, terms)
            if engine.state.iteration % self.n_critic == 0:
                self._generator_step(batchdata, x, target_bins, source_bins, source_posterior, terms)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        output = {name: float(value) for name, value in terms.items()}
        if "g_loss" in output:
            self.last_generator_terms = {name: value for name, value in output.items() if name.startswith("g_")}
        elif "g_warmup" not in output:
            output.update(self.last_generator_terms)  # the latest G terms on iterations without a G update
        self.final_iteration = self._budget_reached() is not None
        return output

    def _warmup_step(self, x: torch.Tensor, target_bins: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """G alone as a conditional autoencoder: L1 between x and G(x, b)."""
        with self._autocast():
            reconstruction = self._generate(x, target_bins)
            self.fire_event(ExaggerationIterationEvents.G_FORWARD_COMPLETED)
            loss = l1_reconstruction(x, reconstruction)
        terms["g_warmup"] = loss.detach()
        self.fire_event(ExaggerationIterationEvents.G_LOSS_COMPLETED)
        self._update(loss, self.g_optimizer, self.g_scaler, *_G_UPDATE)

    def _discriminator_step(
        self, x: torch.Tensor, target_bins: torch.Tensor, source_bins: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> None:
        """Hinge loss of D on the real images (source bins) and the frames G makes of them (target bins)."""
        with self._autocast():
            with torch.no_grad():
                fake, _, _ = self.frames(x, target_bins, source_bins)
            real_scores = self.d_inferer(x, self.discriminator, source_bins)
            fake_scores = self.d_inferer(fake.detach(), self.discriminator, target_bins)
            self.fire_event(ExaggerationIterationEvents.D_FORWARD_COMPLETED)
            d_terms = self.loss_function.discriminator_terms(real_scores, fake_scores)
        terms.update(d_loss=d_terms["total"].detach(), d_real=d_terms["real"].detach(), d_fake=d_terms["fake"].detach())
        self.fire_event(ExaggerationIterationEvents.D_LOSS_COMPLETED)
        self._update(d_terms["total"], self.d_optimizer, self.d_scaler, *_D_UPDATE)

    def _generator_step(
        self,
        batchdata: dict[str, Any],
        x: torch.Tensor,
        target_bins: torch.Tensor,
        source_bins: torch.Tensor,
        source_posterior: torch.Tensor,
        terms: dict[str, torch.Tensor],
    ) -> None:
        """Adversarial, classifier and reconstruction terms of G, with D frozen (no weight gradients for it)."""
        critic = unwrap(self.discriminator)  # frozen here: no DDP gradient synchronisation to wait for
        self.discriminator.requires_grad_(False)
        try:
            with self._autocast():
                if self.deforms:
                    g_terms = self._deformation_terms(batchdata, x, target_bins, source_bins, source_posterior, critic)
                else:
                    g_terms = self._image_terms(batchdata, x, target_bins, source_bins, source_posterior, critic)
            terms.update(
                {"g_loss" if name == "total" else f"g_{name}": term.detach() for name, term in g_terms.items()}
            )
            self.fire_event(ExaggerationIterationEvents.G_LOSS_COMPLETED)
            self._update(g_terms["total"], self.g_optimizer, self.g_scaler, *_G_UPDATE)
        finally:
            self.discriminator.requires_grad_(True)

    def _deformation_terms(
        self,
        batchdata: dict[str, Any],
        x: torch.Tensor,
        target_bins: torch.Tensor,
        source_bins: torch.Tensor,
        source_posterior: torch.Tensor,
        critic: nn.Module,
    ) -> dict[str, torch.Tensor]:
        """G's terms for a deformation explainer: the frame is the warped source; reconstruction at b_src
        is x under the source bin's own field; the cycle warps the frame back from b_t to b_src; the
        displacement's bending energy and folding are penalised (``lambda_smooth``, ``lambda_fold``)."""
        generator = unwrap(self.generator)
        frame, ddf, _, fields_source = self._deformation_frames(x, target_bins, source_bins)
        back_source, back_target = self.g_inferer(frame, self.generator, source_bins, target_bins).chunk(2)
        cycled, _ = generator.compose(frame, back_source, back_target)
        self.fire_event(ExaggerationIterationEvents.G_FORWARD_COMPLETED)
        return self._terms(
            batchdata,
            x,
            frame,
            target_bins,
            source_posterior,
            critic,
            identity=generator.reconstruct(x, fields_source),
            cycled=cycled,
            change=frame - x,
            displacement=ddf,
        )

    def _terms(
        self,
        batchdata: dict[str, Any],
        x: torch.Tensor,
        frame: torch.Tensor,
        target_bins: torch.Tensor,
        source_posterior: torch.Tensor,
        critic: nn.Module,
        **images: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The loss terms of G for ``frame`` (what D and f see) and ``images`` (identity, cycled, change,
        displacement), with the change region and the reconstruction masks of ``x``."""
        return self.loss_function.generator_terms(
            x=x,
            generated=frame,
            target_bins=target_bins,
            fake_scores=self.d_inferer(frame, critic, target_bins),
            classifier=self.classifier,
            masks=self._masks(batchdata, x),
            source_posterior=source_posterior,
            change_region=None if self.change_region is None else self.change_region(x),
            **images,
        )

    def _image_terms(
        self,
        batchdata: dict[str, Any],
        x: torch.Tensor,
        target_bins: torch.Tensor,
        source_bins: torch.Tensor,
        source_posterior: torch.Tensor,
        critic: nn.Module,
    ) -> dict[str, torch.Tensor]:
        """G's terms for an image generator (the papers' losses, see the class docstring)."""
        frame, generated, reconstruction = self.frames(x, target_bins, source_bins)
        if reconstruction is None:
            reconstruction = self._generate(x, source_bins)
        cycled = self._generate(generated, source_bins)
        self.fire_event(ExaggerationIterationEvents.G_FORWARD_COMPLETED)
        return self._terms(
            batchdata,
            x,
            frame,
            target_bins,
            source_posterior,
            critic,
            identity=reconstruction,
            cycled=cycled,
            change=generated - reconstruction,
        )


def _check_loader(loader: Iterable) -> None:
    """ValueError when ``loader`` gives no complete batch (it would train nothing), saying what to change."""
    if not hasattr(loader, "__len__") or len(loader) > 0:
        return
    dataset = getattr(loader, "dataset", ())
    replicas = getattr(getattr(loader, "sampler", None), "num_replicas", 1)
    per_process = f", {len(dataset) // max(1, replicas)} per process of {replicas}" if replicas > 1 else ""
    raise ValueError(
        f"the training set ({len(dataset)} images{per_process}) gives no complete batch of "
        f"{getattr(loader, 'batch_size', '?')}: lower batch_size or add images"
    )


def _epochs(
    loader: Iterable, max_iterations: int, epoch_length: int | None, max_epochs: int | None
) -> tuple[int, int | None, int]:
    """``(max_iterations, epoch_length, max_epochs)`` checked, with the epoch length taken from ``loader`` and
    ``max_epochs`` derived from ``max_iterations`` when unset; a ``max_epochs`` that would stop first is refused."""
    if max_iterations is None or int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    max_iterations = int(max_iterations)
    if epoch_length is None and hasattr(loader, "__len__"):
        epoch_length = len(loader)
    # Epochs enough for max_iterations (an epoch has at least one iteration when its length is unknown).
    needed = max_iterations if epoch_length is None else -(-max_iterations // int(epoch_length))
    if max_epochs is None:
        return max_iterations, epoch_length, needed
    if max_epochs < needed:
        raise ValueError(
            f"max_epochs {max_epochs} would stop training before max_iterations {max_iterations} "
            f"({epoch_length} iterations an epoch): leave max_epochs unset, max_iterations defines the stop"
        )
    return max_iterations, epoch_length, max_epochs


def _check_settings(n_critic: int, composition: str, warmup_iterations: int, max_seconds: float | None) -> None:
    """ValueError naming the first of the trainer's settings that is out of range."""
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    if composition not in COMPOSITIONS:
        raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
    if warmup_iterations < 0:
        raise ValueError(f"warmup_iterations must be >= 0, got {warmup_iterations}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
