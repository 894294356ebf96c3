"""The explainer recipe options: train what you ship (transfer composition), warm start, change
region, time budget, AMP scalers, and explainer files that carry their architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from test_explainer_training import NUM_BINS, SIZE, disc_classifier, make_trainer, tiny_networks, toy_batches

from monai_exaggeration.engines import TrainingState
from monai_exaggeration.losses import DilatedRegion, ExaggerationLoss, target_classifier_loss
from monai_exaggeration.methods.series import compose_series, generate_series
from monai_exaggeration.networks import ExplainerRecord, load_explainer, save_explainer


def randomised(generator: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Per-bin CBN tables away from their identity start, so the bins differ."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith(("gamma.weight", "beta.weight")):
                parameter.normal_(1.0 if "gamma" in name else 0.0, 0.5)
    return generator


def test_transfer_frame_at_the_source_bin_is_the_source_exactly() -> None:
    classifier = disc_classifier()
    records = toy_batches(classifier, 16)
    generator, discriminator = tiny_networks()
    randomised(generator)
    trainer = make_trainer(records, generator, discriminator, classifier, composition="transfer")
    x = torch.stack([r["image"] for r in records[:8]])
    source = torch.tensor([r["source_bin"] for r in records[:8]])
    target = source.clone()
    target[4:] = (source[4:] + 2) % NUM_BINS
    frame, generated, reconstruction = trainer.frames(x, target, source)
    assert torch.equal(frame[:4], x[:4])  # bit for bit
    assert (frame[4:] - x[4:]).abs().amax() > 1e-3
    expected = (x[4:] + generated[4:] - reconstruction[4:]).clamp(-1, 1)
    assert torch.allclose(frame[4:], expected)
    # the same rule for whole series (validation and inference at model resolution)
    series = generate_series(generator, x, NUM_BINS)
    composed = compose_series(x, series, source, "transfer")
    assert all(torch.equal(composed[i, int(source[i])], x[i]) for i in range(8))
    assert torch.equal(compose_series(x, series, source, "generated"), series)


def test_transfer_gradients_reach_the_generator_through_the_frozen_classifier() -> None:
    from monai.networks.nets import DenseNet

    from monai_exaggeration.networks import BlackBoxClassifier

    network = DenseNet(spatial_dims=2, in_channels=1, out_channels=1, init_features=4, growth_rate=4, block_config=(2,))
    classifier = BlackBoxClassifier(network)
    records = toy_batches(disc_classifier(), 16)
    generator, discriminator = tiny_networks()
    trainer = make_trainer(records, generator, discriminator, classifier, composition="transfer")
    x = torch.stack([r["image"] for r in records[:8]])
    source = torch.zeros(8, dtype=torch.long)
    target = torch.full((8,), NUM_BINS - 1)
    frame, _, _ = trainer.frames(x, target, source)
    target_classifier_loss(classifier, frame, target, NUM_BINS).backward()
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # G learns from f through the frame
    assert all(p.grad is None for p in network.parameters())  # f stays frozen


@pytest.mark.slow
def test_transfer_training_moves_the_scores_and_keeps_the_source() -> None:
    classifier = disc_classifier()
    records = toy_batches(classifier)
    generator, discriminator = tiny_networks()
    trainer = make_trainer(
        records, generator, discriminator, classifier, n_critic=1, max_iterations=150, composition="transfer"
    )
    trainer.run()
    x = torch.stack([r["image"] for r in records[:16]])
    source = torch.tensor([r["source_bin"] for r in records[:16]])
    frames = compose_series(x, generate_series(generator, x, NUM_BINS), source, "transfer")
    scores = classifier(frames.flatten(0, 1)).reshape(16, NUM_BINS)
    assert float(scores[:, -1].mean()) > float(scores[:, 0].mean()) + 0.3
    assert {"g_change", "g_cls", "g_identity"} <= set(trainer.state.output)


def test_warm_start_trains_only_the_generator_as_an_autoencoder() -> None:
    classifier = disc_classifier()
    generator, discriminator = tiny_networks()
    trainer = make_trainer(
        toy_batches(classifier, 32),
        generator,
        discriminator,
        classifier,
        n_critic=1,
        max_iterations=5,
        warmup_iterations=3,
    )
    g_steps, d_steps = [], []
    trainer.g_optimizer.register_step_post_hook(lambda *args: g_steps.append(trainer.state.iteration))
    trainer.d_optimizer.register_step_post_hook(lambda *args: d_steps.append(trainer.state.iteration))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: outputs.append(dict(engine.state.output)))
    trainer.run()
    assert g_steps == [1, 2, 3, 4, 5] and d_steps == [4, 5]
    assert set(outputs[0]) == {"g_warmup"} and "d_loss" in outputs[-1]


def test_change_term_penalises_only_outside_the_region() -> None:
    loss = ExaggerationLoss(num_bins=NUM_BINS, lambda_change=2.0)
    change = torch.zeros(2, 1, SIZE, SIZE)
    region = torch.zeros(2, 1, SIZE, SIZE)
    region[:, :, 8:24, 8:24] = 1
    change[:, :, 10:20, 10:20] = 0.5  # inside: free
    classifier = disc_classifier()
    x = torch.zeros(2, 1, SIZE, SIZE)
    terms = loss.generator_terms(
        x=x,
        generated=x,
        target_bins=torch.tensor([0, 1]),
        fake_scores=torch.zeros(2),
        classifier=classifier,
        change=change,
        change_region=region,
    )
    assert float(terms["change"]) == 0.0
    change[:, :, 0:4, 0:4] = 1.0  # outside: 16 pixels of 1024 per image
    terms = loss.generator_terms(
        x=x,
        generated=x,
        target_bins=torch.tensor([0, 1]),
        fake_scores=torch.zeros(2),
        classifier=classifier,
        change=change,
        change_region=region,
    )
    assert float(terms["change"]) == pytest.approx(16 / 1024)
    without = ExaggerationLoss(num_bins=NUM_BINS).generator_terms(
        x=x,
        generated=x,
        target_bins=torch.tensor([0, 1]),
        fake_scores=torch.zeros(2),
        classifier=classifier,
        change=change,
    )
    assert float(terms["total"]) - float(without["total"]) == pytest.approx(2.0 * 16 / 1024, rel=1e-4)


def test_dilated_region_grows_the_segmented_structure() -> None:
    class Square(torch.nn.Module):  # a "segmenter" that finds a centred 16x16 square at 64 px
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(images.shape[0], 3, 64, 64)
            out[:, 0, 24:40, 24:40] = 1.0
            return out

    region = DilatedRegion(Square(), dilation=0.125)(torch.zeros(2, 1, 128, 128))
    assert region.shape == (2, 1, 128, 128)
    assert float(region[0, 0, 64, 64]) == 1.0  # inside the square
    assert float(region[0, 0, 64, 48 - 14]) == 1.0  # 16 px (12.5 % of 128) beyond its edge at x = 48
    assert float(region[0, 0, 64, 10]) == 0.0 and float(region[0, 0, 5, 5]) == 0.0


def test_time_budget_stops_training_and_counts_every_sitting() -> None:
    classifier = disc_classifier()
    generator, discriminator = tiny_networks()
    trainer = make_trainer(toy_batches(classifier, 32), generator, discriminator, classifier, max_seconds=1e-6)
    trainer.run()
    assert trainer.state.iteration == 1  # stopped after the first iteration
    state = trainer.training_state.state_dict()
    assert state["seconds"] > 0
    again = make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, max_seconds=1e-6)
    again.training_state.load_state_dict(state)
    assert again.training_state.seconds >= state["seconds"]


def test_amp_uses_one_scaler_per_optimiser_and_checkpoints_both() -> None:
    classifier = disc_classifier()
    generator, discriminator = tiny_networks()
    trainer = make_trainer(
        toy_batches(classifier, 32), generator, discriminator, classifier, n_critic=2, max_iterations=4, amp=True
    )
    trainer.run()
    state = trainer.training_state.state_dict()
    assert state["g_scaler"] and state["d_scaler"]
    # each scaler is updated once per step of its own optimiser: D 4 times, G twice (n_critic 2)
    assert (state["d_scaler"]["_growth_tracker"], state["g_scaler"]["_growth_tracker"]) == (4, 2)
    fresh = make_trainer(toy_batches(classifier, 32), *tiny_networks(), classifier, amp=True)
    fresh.training_state.load_state_dict(state)
    assert fresh.g_scaler.state_dict() == state["g_scaler"] and fresh.d_scaler.state_dict() == state["d_scaler"]
    plain = TrainingState(torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False))
    plain.load_state_dict(state)  # a CPU run without AMP resumes from an AMP checkpoint (and back)
    assert plain.state_dict()["g_scaler"] == {}


def test_scalers_survive_the_bundles_checkpoint_round_trip(tmp_path: Path) -> None:
    """Both scalers go into the bundle's checkpoint_dict (through training_state) and come back on resume."""
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointSaver

    from monai_exaggeration.engines import attach_resume

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / "cxr" / "configs" / "train.json"))
    bundle_keys = set(parser["checkpoint_dict"])
    assert parser["checkpoint_dict"]["training_state"] == "$@train#trainer.training_state"

    def checkpoint_dict(trainer) -> dict:  # the bundle's checkpoint_dict, less the explainer record
        objects = {
            "generator": trainer.generator,
            "discriminator": trainer.discriminator,
            "g_optimizer": trainer.g_optimizer,
            "d_optimizer": trainer.d_optimizer,
            "training_state": trainer.training_state,
            "trainer": trainer,
        }
        assert set(objects) == bundle_keys - {"explainer"}
        return objects

    classifier = disc_classifier()
    first = make_trainer(
        toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=2, max_iterations=4, amp=True
    )
    CheckpointSaver(
        str(tmp_path),
        checkpoint_dict(first),
        file_prefix="explainer",
        save_final=True,
        final_filename="explainer_final.pt",
    ).attach(first)
    first.run()
    saved = torch.load(tmp_path / "explainer_final.pt", map_location="cpu", weights_only=True)["training_state"]
    assert (saved["d_scaler"]["_growth_tracker"], saved["g_scaler"]["_growth_tracker"]) == (4, 2)

    again = make_trainer(
        toy_batches(classifier, 32), *tiny_networks(), classifier, n_critic=2, max_iterations=6, amp=True
    )
    assert again.g_scaler.state_dict() != saved["g_scaler"]  # a fresh scaler
    assert attach_resume(again, tmp_path, checkpoint_dict(again)).name == "explainer_final.pt"
    restored = {}
    again.add_event_handler(
        Events.STARTED,
        lambda engine: restored.update(
            g=engine.g_scaler.state_dict(), d=engine.d_scaler.state_dict(), iteration=engine.state.iteration
        ),
    )
    again.run()
    assert restored == {"g": saved["g_scaler"], "d": saved["d_scaler"], "iteration": 4}
    assert again.training_state.g_scaler is again.g_scaler and again.training_state.d_scaler is again.d_scaler
    # the resumed run steps each scaler once per update of its own optimiser: D at 5 and 6, G at 6
    assert (again.d_scaler.state_dict()["_growth_tracker"], again.g_scaler.state_dict()["_growth_tracker"]) == (6, 3)


def test_explainer_file_rebuilds_its_generator(tmp_path: Path) -> None:
    generator, _ = tiny_networks()
    randomised(generator)
    record = ExplainerRecord(generator, composition="transfer", finding="cardiomegaly", classifier="abc")
    path = save_explainer(tmp_path / "explainer.pt", generator, record, half=True)
    loaded = load_explainer(path)
    assert type(loaded.generator) is type(generator) and loaded.composition == "transfer"
    assert loaded.num_bins == NUM_BINS and loaded.record["classifier"] == "abc"
    x = torch.rand(NUM_BINS, 1, SIZE, SIZE) * 2 - 1
    bins = torch.arange(NUM_BINS)
    generator.eval()
    assert torch.allclose(loaded.generator(x, bins), generator(x, bins), atol=2e-2)  # fp16 storage


def test_old_explainer_file_names_the_override(tmp_path: Path) -> None:
    generator, _ = tiny_networks()
    old = tmp_path / "old.pt"
    torch.save(generator.state_dict(), old)
    with pytest.raises(ValueError, match="legacy_explainer_v0.json"):
        load_explainer(old)
    assert load_explainer(old, network=tiny_networks()[0]).composition == "generated"
    with pytest.raises(ValueError, match="do not fit"):
        from monai_exaggeration.networks import ExaggerationGenerator

        load_explainer(old, network=ExaggerationGenerator(num_bins=NUM_BINS, stem_channels=4, encoder_channels=(8,)))


def test_resume_refuses_another_architecture() -> None:
    generator, _ = tiny_networks()
    record = ExplainerRecord(generator, composition="transfer")
    state = record.state_dict()
    ExplainerRecord(tiny_networks()[0], composition="transfer").load_state_dict(state)
    with pytest.raises(ValueError, match="composition"):
        ExplainerRecord(tiny_networks()[0], composition="generated").load_state_dict(state)


def _script(name: str):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_script_ships_generator_and_record_only(tmp_path: Path) -> None:
    generator, discriminator = tiny_networks()
    randomised(generator)
    record = ExplainerRecord(generator, composition="transfer", finding="cardiomegaly")
    checkpoint = tmp_path / "explainer_final.pt"
    torch.save(
        {
            "generator": generator.state_dict(),
            "explainer": record.state_dict(),
            "discriminator": discriminator.state_dict(),
            "trainer": {"iteration": 7},
        },
        checkpoint,
    )
    out = _script("export_explainer").main([str(checkpoint), str(tmp_path / "shipped.pt")])
    content = torch.load(out, weights_only=True)
    assert set(content) == {"generator", "explainer"}
    assert all(v.dtype == torch.float16 for v in content["generator"].values() if v.is_floating_point())
    assert load_explainer(out).composition == "transfer"


def test_ablation_table_reads_evaluation_metrics(tmp_path: Path) -> None:
    import json

    metrics = {
        "n_images": 200,
        "validity": {"written_frames": {"mae": 0.1234, "flip_rate": 0.9, "monotone_rate": 0.8, "median_spearman": 1.0}},
        "preservation": {
            "identity": {"encoder": {"per_step": [1.0, 0.8]}},
            "ssim_outside_heart": 0.95,
            "l1_outside_heart": 0.01,
            "median_inside_outside_ratio": 2.0,
        },
        "clinical_faithfulness": {"median_delta_ctr": 0.06, "median_spearman_ctr_step": 0.9},
        "realism": {
            "encoder": {"fid_real_vs_all_frames": 3.0, "fid_real_vs_real": 2.0, "kid_real_vs_all_frames": 0.01}
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    text = _script("ablation_table").main([f"(x)={tmp_path}"])
    row = text.splitlines()[-1]
    for cell in ("| (x) | 200 |", "0.123", "90.0%", "80.0%", "90.0%", "0.950", "+0.060", "1.50"):
        assert cell in row, (cell, row)


def test_gpu_profile_builds_a_shippable_generator() -> None:
    """train_gpu.json over the CPU recipe: 128 px, batch 32, 9-minute budget, fp16 weights under 25 MB."""
    from conftest import REPO_ROOT
    from monai.bundle import ConfigParser

    from monai_exaggeration.networks import count_parameters

    configs = REPO_ROOT / "bundles" / "cxr" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ("train.json", "train_cpu.json", "train_gpu.json")])
    assert (parser["image_size"], parser["batch_size"], parser["max_seconds"]) == (128, 32, 540)
    assert parser["composition"] == "transfer" and parser["warmup_iterations"] > 0 and parser["lambda_change"] > 0
    generator = parser.get_parsed_content("network_def")
    assert count_parameters(generator) * 2 < 25e6  # bytes as fp16
    assert generator.bottleneck_shape(128) == (384, 4, 4)
