"""The explainer's trainer, series generation and validation metrics on a toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from torch import nn

from monai_exaggeration.engines import (
    ExaggerationTrainer,
    SeriesEvaluator,
    SeriesValidityMetric,
    sample_target_bins,
)
from monai_exaggeration.losses import ExaggerationLoss
from monai_exaggeration.methods.series import generate_series
from monai_exaggeration.metrics import series_validity
from monai_exaggeration.networks import (
    BlackBoxClassifier,
    ExaggerationDiscriminator,
    ExaggerationGenerator,
)

SIZE = 32
NUM_BINS = 5


def disc_classifier() -> BlackBoxClassifier:
    """A black box that only looks at the mean brightness of a central disc."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2) <= (SIZE / 4) ** 2).float()

    def logit(images: torch.Tensor) -> torch.Tensor:
        brightness = (images * disc).sum(dim=(-1, -2)) / disc.sum()
        return 6.0 * brightness.reshape(-1, 1)

    return BlackBoxClassifier(logit, activation="sigmoid")


def toy_batches(classifier: BlackBoxClassifier, count: int = 64, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2) <= (SIZE / 4) ** 2).float()
    records = []
    for _ in range(count):
        brightness = torch.rand((), generator=generator) * 1.2 - 0.6
        image = (0.1 * torch.randn(1, SIZE, SIZE, generator=generator) - 0.3) * (1 - disc) + brightness * disc
        image = image.clamp(-1, 1)
        posterior = float(classifier(image[None]))
        records.append(
            {
                "image": image,
                "source_posterior": posterior,
                "source_bin": min(int(posterior * NUM_BINS), NUM_BINS - 1),
                "label": torch.tensor([float(posterior >= 0.5)]),
            }
        )
    return records


def tiny_networks() -> tuple[ExaggerationGenerator, ExaggerationDiscriminator]:
    torch.manual_seed(0)
    generator = ExaggerationGenerator(num_bins=NUM_BINS, stem_channels=8, encoder_channels=(16, 32))
    discriminator = ExaggerationDiscriminator(num_bins=NUM_BINS, channels=(8, 16, 32))
    return generator, discriminator


def series_mae(generator: nn.Module, classifier: BlackBoxClassifier, images: torch.Tensor) -> tuple[float, float]:
    series = generate_series(generator, images, NUM_BINS)
    scores = classifier(series.flatten(0, 1)).reshape(series.shape[:2]).detach().numpy()
    validity = series_validity(scores, classifier(images).detach().numpy())
    return validity.mae, validity.median_spearman


def make_trainer(records: list[dict], generator, discriminator, classifier, **kwargs) -> ExaggerationTrainer:
    """A trainer on 16-image batches; ``max_iterations`` 1000 unless given."""
    loader = DataLoader(records, batch_size=16, shuffle=True, drop_last=True)
    kwargs.setdefault("max_iterations", 1000)
    return ExaggerationTrainer(
        device="cpu",
        train_data_loader=loader,
        generator=generator,
        discriminator=discriminator,
        classifier=classifier,
        g_optimizer=torch.optim.Adam(generator.parameters(), 2e-3, betas=(0.0, 0.9)),
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.0, 0.9)),
        loss_function=ExaggerationLoss(num_bins=NUM_BINS, lambda_gan=0.1, lambda_cls=1.0, lambda_rec=10.0),
        **kwargs,
    )


@pytest.mark.slow
def test_short_training_moves_scores_toward_bin_centres() -> None:
    classifier = disc_classifier()
    records = toy_batches(classifier)
    generator, discriminator = tiny_networks()
    images = torch.stack([record["image"] for record in records[:16]])
    mae_before, _ = series_mae(generator, classifier, images)
    trainer = make_trainer(records, generator, discriminator, classifier, n_critic=1, max_iterations=150)
    trainer.run()
    assert trainer.state.iteration == 150
    mae_after, spearman_after = series_mae(generator, classifier, images)
    assert mae_after < 0.6 * mae_before, (mae_before, mae_after)
    assert spearman_after > 0.8
    output = trainer.state.output
    assert {"d_loss", "g_adv", "g_cls", "g_identity", "g_cycle", "g_loss"} <= set(output)
    assert all(np.isfinite(value) for value in output.values())


def test_generator_updates_every_n_critic_iterations() -> None:
    classifier = disc_classifier()
    generator, discriminator = tiny_networks()
    trainer = make_trainer(
        toy_batches(classifier, 32), generator, discriminator, classifier, n_critic=3, max_iterations=5
    )
    g_steps, d_steps = [], []
    trainer.g_optimizer.register_step_post_hook(lambda *args: g_steps.append(trainer.state.iteration))
    trainer.d_optimizer.register_step_post_hook(lambda *args: d_steps.append(trainer.state.iteration))
    trainer.run()
    assert d_steps == [1, 2, 3, 4, 5]
    assert g_steps == [3]


def test_classifier_stays_frozen_during_training() -> None:
    from monai.networks.nets import DenseNet

    network = DenseNet(spatial_dims=2, in_channels=1, out_channels=1, init_features=4, growth_rate=4, block_config=(2,))
    classifier = BlackBoxClassifier(network)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    records = toy_batches(disc_classifier(), 16)
    generator, discriminator = tiny_networks()
    make_trainer(records, generator, discriminator, classifier, n_critic=1, max_iterations=3).run()
    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), name  # weights and BN running statistics untouched


def test_calibrated_sampling_follows_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    negatives = sample_target_bins(20000, 10, "calibrated", labels=torch.zeros(20000), generator=generator)
    positives = sample_target_bins(20000, 10, "calibrated", labels=torch.ones(20000), generator=generator)
    assert negatives.float().mean() < 3.5 < 5.5 < positives.float().mean()
    counts_neg = torch.bincount(negatives, minlength=10).float()
    counts_pos = torch.bincount(positives, minlength=10).float()
    share_negative = counts_neg / (counts_neg + counts_pos)  # per target bin, with balanced labels
    expected = 1 - (torch.arange(10) + 0.5) / 10
    assert torch.allclose(share_negative, expected, atol=0.03)
    with pytest.raises(ValueError, match="labels"):
        sample_target_bins(4, 10, "calibrated")
    uniform = sample_target_bins(20000, 10, "uniform", generator=generator)
    assert torch.bincount(uniform, minlength=10).min() > 1800


def test_series_normalisation_choice_is_explicit() -> None:
    generator, _ = tiny_networks()
    with torch.no_grad():  # give each bin its own CBN parameters so the series varies
        for module in generator.modules():
            if hasattr(module, "gamma"):
                module.gamma.weight.uniform_(0.5, 1.5)
                module.beta.weight.uniform_(-0.5, 0.5)
    generator.train()
    generator(torch.randn(16, 1, SIZE, SIZE), torch.randint(0, NUM_BINS, (16,)))  # non-trivial running stats
    running_before = [m.running_mean.clone() for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    images = torch.randn(3, 1, SIZE, SIZE).clamp(-1, 1)

    series = generate_series(generator, images, NUM_BINS, norm="series")
    assert series.shape == (3, NUM_BINS, 1, SIZE, SIZE)
    # "series": a query's frames are one batch, so a series does not depend on the other queries...
    alone = generate_series(generator, images[1:2], NUM_BINS, norm="series")
    torch.testing.assert_close(series[1:2], alone)
    # ...and running statistics are left as they were, and the model keeps its mode.
    running_after = [m.running_mean for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running_before, running_after))
    assert generator.training
    # "running" uses the running statistics: a different, also batch-independent, result.
    running = generate_series(generator, images, NUM_BINS, norm="running")
    torch.testing.assert_close(running[1:2], generate_series(generator, images[1:2], NUM_BINS, norm="running"))
    assert not torch.allclose(running, series)
    assert (series[:, 0] != series[:, -1]).any()  # the bins really condition the frames
    with pytest.raises(ValueError, match="norm"):
        generate_series(generator, images, NUM_BINS, norm="instance")


def test_series_evaluator_reports_validity() -> None:
    classifier = disc_classifier()
    records = toy_batches(classifier, 8)
    generator, _ = tiny_networks()
    evaluator = SeriesEvaluator(
        device="cpu",
        val_data_loader=DataLoader(records, batch_size=4),
        generator=generator,
        classifier=classifier,
        num_bins=NUM_BINS,
        key_val_metric={"val_validity": SeriesValidityMetric("validity")},
        additional_metrics={"val_mae": SeriesValidityMetric("mae"), "val_flip": SeriesValidityMetric("flip_rate")},
    )
    evaluator.run()
    metrics = evaluator.state.metrics
    assert metrics["val_validity"] == pytest.approx(1 - metrics["val_mae"])
    assert 0.0 <= metrics["val_flip"] <= 1.0
    assert evaluator.state.output["scores"].shape == (4, NUM_BINS)


def test_series_validity_on_known_series() -> None:
    centres = (np.arange(10) + 0.5) / 10
    perfect = np.tile(centres, (4, 1))
    result = series_validity(perfect, np.array([0.05, 0.2, 0.7, 0.9]))
    assert result.mae == pytest.approx(0.0) and result.median_spearman == pytest.approx(1.0)
    assert result.flip_rate == 1.0 and result.monotone_rate == 1.0
    flat = np.full((2, 10), 0.3)
    result = series_validity(flat, np.array([0.3, 0.3]))
    assert result.flip_rate == 0.0 and result.median_spearman == 0.0
    assert result.mae == pytest.approx(np.abs(0.3 - centres).mean())
    with pytest.raises(ValueError):
        series_validity(np.zeros((2, 10)), np.zeros(3))


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, caplog) -> None:
    import logging

    from ignite.engine import Engine

    from monai_exaggeration.engines import attach_resume, latest_checkpoint

    generator, _ = tiny_networks()
    torch.save({"generator": generator.state_dict()}, tmp_path / "explainer_checkpoint_iteration=10.pt")
    (tmp_path / "explainer_checkpoint_iteration=12.pt").write_bytes(b"truncated by kill -9")
    (tmp_path / "explainer_final.pt").write_bytes(b"not a periodic checkpoint")
    assert latest_checkpoint(tmp_path).name == "explainer_checkpoint_iteration=12.pt"
    with caplog.at_level(logging.INFO):
        used = attach_resume(Engine(lambda engine, batch: None), tmp_path, {"generator": generator})
    assert used.name == "explainer_checkpoint_iteration=10.pt"
    assert "skipping damaged checkpoint" in caplog.text and "(iteration 10)" in caplog.text
    assert attach_resume(Engine(lambda engine, batch: None), tmp_path / "empty", {"generator": generator}) is None


def test_resume_prefers_a_newer_final_file_prunes_to_n_saved_and_stops_when_done(tmp_path) -> None:
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver

    from monai_exaggeration.engines import attach_resume

    generator, _ = tiny_networks()

    def checkpoint(iteration: int) -> dict:
        return {
            "generator": generator.state_dict(),
            "trainer": {"iteration": iteration, "epoch_length": 2, "max_epochs": 100},
        }

    for iteration in (2, 4, 6, 8):  # e.g. two killed sittings: n_saved=2 each, never pruned across them
        torch.save(checkpoint(iteration), tmp_path / f"explainer_checkpoint_iteration={iteration}.pt")
    torch.save(checkpoint(9), tmp_path / "explainer_final.pt")  # the finished run's final file holds the same dict

    def saver_on(engine: Engine) -> CheckpointSaver:
        saver = CheckpointSaver(
            str(tmp_path),
            {"generator": generator, "trainer": engine},
            file_prefix="explainer",
            save_interval=2,
            epoch_level=False,
            n_saved=2,
        )
        saver.attach(engine)
        return saver

    finished = Engine(lambda engine, batch: None)
    before = sorted(p.name for p in tmp_path.iterdir())
    used = attach_resume(
        finished, tmp_path, {"generator": generator, "trainer": finished}, saver=saver_on(finished), max_iterations=9
    )
    assert used.name == "explainer_final.pt"
    finished.run(range(2), max_epochs=10)  # already trained to 9: returns at once, nothing written or removed
    assert finished.state.iteration == 0 and sorted(p.name for p in tmp_path.iterdir()) == before

    engine = Engine(lambda engine, batch: None)
    saver = saver_on(engine)
    used = attach_resume(engine, tmp_path, {"generator": generator, "trainer": engine}, saver=saver, max_iterations=12)
    assert used.name == "explainer_final.pt"
    assert sorted(p.name for p in tmp_path.glob("explainer_checkpoint_*.pt")) == [
        "explainer_checkpoint_iteration=6.pt",
        "explainer_checkpoint_iteration=8.pt",
    ]  # pruned to n_saved now
    engine.run(range(2), max_epochs=6)
    assert engine.state.iteration == 12  # continued from the final file's 9
    assert sorted(p.name for p in tmp_path.glob("explainer_checkpoint_*.pt")) == [
        "explainer_checkpoint_iteration=10.pt",
        "explainer_checkpoint_iteration=12.pt",
    ]


def test_series_validity_scores_selected_bins_against_their_own_centres() -> None:
    """A 5-frame series of bins 0, 2, 4, 7, 9 (num_frames 5) is measured against those bins' centres."""
    from monai_exaggeration.binning import centre_values
    from monai_exaggeration.metrics import series_validity

    bins = [0, 2, 4, 7, 9]
    perfect = centre_values(10, bins)[None]  # 0.05, 0.25, 0.45, 0.75, 0.95
    result = series_validity(perfect, np.array([0.3]), bins=bins, num_bins=10)
    assert result.mae == pytest.approx(0.0, abs=1e-12) and result.flip_rate == 1.0
    assert result.median_spearman == pytest.approx(1.0)
    naive = series_validity(perfect, np.array([0.3]))  # as if the 5 frames were 5 bins of 5: wrong centres
    assert naive.mae > 0.04
    with pytest.raises(ValueError, match="5 frames per series but 4 bins"):
        series_validity(perfect, np.array([0.3]), bins=bins[:4], num_bins=10)
    with pytest.raises(ValueError, match="bins must lie in 0..9"):
        centre_values(10, [10])
    assert centre_values(10, [1]).tolist() == [0.15]  # exact decimal, as logs and DICOM text show it


def test_iteration_events_fire_in_order_for_each_update() -> None:
    from monai.engines.utils import IterationEvents

    from monai_exaggeration.engines.trainer import ExaggerationIterationEvents as E

    classifier = disc_classifier()
    trainer = make_trainer(
        toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=2, warmup_iterations=1, max_iterations=5
    )
    fired: list[tuple[int, str]] = []
    seen: dict[str, set[str]] = {}
    for event in [*E, IterationEvents.MODEL_COMPLETED]:

        def record(engine, name=event.name) -> None:
            fired.append((engine.state.iteration, name))
            seen.setdefault(name, set()).update(engine.state.output)

        trainer.add_event_handler(event, record)
    trainer.run()
    g_update = ["G_FORWARD_COMPLETED", "G_LOSS_COMPLETED", "G_BACKWARD_COMPLETED", "G_MODEL_COMPLETED"]
    d_update = ["D_FORWARD_COMPLETED", "D_LOSS_COMPLETED", "D_BACKWARD_COMPLETED", "D_MODEL_COMPLETED"]
    # iteration 1: the warm start; then D every iteration and G every 2nd (n_critic 2)
    expected = {1: g_update, 2: d_update + g_update, 3: d_update, 4: d_update + g_update, 5: d_update}
    for iteration, names in expected.items():
        assert [name for it, name in fired if it == iteration] == [*names, "MODEL_COMPLETED"], iteration
    counts = {name: sum(1 for _, n in fired if n == name) for name in {n for _, n in fired}}
    assert counts == {**dict.fromkeys(d_update, 4), **dict.fromkeys(g_update, 3), "MODEL_COMPLETED": 5}
    # the terms computed so far are in engine.state.output when a phase's event fires
    assert {"d_loss", "d_real", "d_fake"} <= seen["D_LOSS_COMPLETED"] and "g_loss" in seen["G_LOSS_COMPLETED"]
    assert "g_warmup" in seen["G_LOSS_COMPLETED"]


def test_generator_and_discriminator_run_through_the_trainers_inferers() -> None:
    from monai.inferers import SimpleInferer

    class Counting(SimpleInferer):
        def __init__(self) -> None:
            super().__init__()
            self.networks: list[str] = []

        def __call__(self, inputs, network, *args, **kwargs):
            self.networks.append(type(network).__name__)
            return super().__call__(inputs, network, *args, **kwargs)

    classifier = disc_classifier()
    g_inferer, d_inferer = Counting(), Counting()
    trainer = make_trainer(
        toy_batches(classifier, 32),
        *tiny_networks(),
        classifier,
        n_critic=2,
        max_iterations=2,
        g_inferer=g_inferer,
        d_inferer=d_inferer,
    )
    trainer.run()
    # D updates: G(x, b_t) under no_grad, then D on reals and fakes; the G update (iteration 2): G(x, b_t),
    # G(x, b_src), G(G(x, b_t), b_src) and D on G's frames
    assert g_inferer.networks == ["ExaggerationGenerator"] * (1 + 1 + 3)
    assert d_inferer.networks == ["ExaggerationDiscriminator"] * (2 + 2 + 1)


def test_max_iterations_alone_defines_the_stop() -> None:
    classifier = disc_classifier()
    trainer = make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=1, max_iterations=7)
    assert trainer.state.epoch_length == 2 and trainer.state.max_epochs == 4  # derived: enough epochs for 7
    trainer.run()
    assert trainer.state.iteration == 7 and trainer.final_iteration  # stopped inside epoch 4
    with pytest.raises(ValueError, match="max_epochs 2 would stop training before max_iterations 7"):
        make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, max_iterations=7, max_epochs=2)
    with pytest.raises(ValueError, match="max_iterations must be >= 1"):
        make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, max_iterations=0)
