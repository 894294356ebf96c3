"""Benchmark: iterations/s of ExaggerationTrainer against a bare PyTorch loop doing the identical step.

Both run the same generator, discriminator, classifier, optimisers, losses and batches (D every
iteration, G every ``--n_critic``-th); the bare loop has no ignite engine, no MONAI workflow and no
handlers. Runs alternate (bare, trainer, bare, trainer, ...) so drifts in machine load hit both;
the overhead ratio is trainer time / bare time (target <= 1.05).

    python benchmarks/trainer_overhead.py                      # CPU profile widths, 64 px
    python benchmarks/trainer_overhead.py --iterations 40 --repeats 3 --image_size 64 --batch_size 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.data import DataLoader

from monai_exaggeration.engines import ExaggerationTrainer, sample_target_bins
from monai_exaggeration.losses import ExaggerationLoss
from monai_exaggeration.networks import (
    BlackBoxClassifier,
    ExaggerationDiscriminator,
    ExaggerationGenerator,
)


def build(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    from monai.networks.nets import DenseNet

    classifier = BlackBoxClassifier(
        DenseNet(
            spatial_dims=2, in_channels=1, out_channels=1, init_features=32, growth_rate=16, block_config=(4, 8, 12, 8)
        )
    )
    generator = ExaggerationGenerator(num_bins=10, stem_channels=32, encoder_channels=(64, 128, 256, 256))
    discriminator = ExaggerationDiscriminator(num_bins=10, channels=(32, 64, 128, 256, 256))
    images = torch.rand(args.batch_size * 4, 1, args.image_size, args.image_size) * 2 - 1
    with torch.no_grad():
        posteriors = classifier(images)
    records = [
        {"image": image, "source_posterior": float(p), "source_bin": min(int(p * 10), 9)}
        for image, p in zip(images, posteriors)
    ]
    return {
        "generator": generator,
        "discriminator": discriminator,
        "classifier": classifier,
        "g_optimizer": torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.0, 0.9)),
        "d_optimizer": torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.0, 0.9)),
        "loss": ExaggerationLoss(num_bins=10),
        "loader": DataLoader(records, batch_size=args.batch_size, shuffle=False, drop_last=True),
    }


def bare_loop(parts: dict, iterations: int, n_critic: int) -> float:
    """The identical training step written as a plain loop; returns seconds."""
    g, d, f, loss = parts["generator"], parts["discriminator"], parts["classifier"], parts["loss"]
    start = time.perf_counter()
    iteration = 0
    while iteration < iterations:
        for batch in parts["loader"]:
            iteration += 1
            x, source_bins = batch["image"], batch["source_bin"].long()
            target_bins = sample_target_bins(x.shape[0], 10)
            g.train()
            d.train()
            with torch.no_grad():
                fake = g(x, target_bins)
            d_terms = loss.discriminator_terms(d(x, source_bins), d(fake, target_bins))
            parts["d_optimizer"].zero_grad(set_to_none=True)
            d_terms["total"].backward()
            parts["d_optimizer"].step()
            if iteration % n_critic == 0:
                d.requires_grad_(False)
                generated = g(x, target_bins)
                g_terms = loss.generator_terms(
                    x=x,
                    generated=generated,
                    target_bins=target_bins,
                    fake_scores=d(generated, target_bins),
                    classifier=f,
                    identity=g(x, source_bins),
                    cycled=g(generated, source_bins),
                    source_posterior=batch["source_posterior"].float(),
                )
                parts["g_optimizer"].zero_grad(set_to_none=True)
                g_terms["total"].backward()
                parts["g_optimizer"].step()
                d.requires_grad_(True)
            if iteration >= iterations:
                break
    return time.perf_counter() - start


def trainer_loop(parts: dict, iterations: int, n_critic: int) -> float:
    trainer = ExaggerationTrainer(
        device="cpu",
        train_data_loader=parts["loader"],
        generator=parts["generator"],
        discriminator=parts["discriminator"],
        classifier=parts["classifier"],
        g_optimizer=parts["g_optimizer"],
        d_optimizer=parts["d_optimizer"],
        loss_function=parts["loss"],
        n_critic=n_critic,
        max_iterations=iterations,
    )
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--n_critic", type=int, default=1)
    args = parser.parse_args()
    parts = build(args)
    bare_loop(parts, 3, args.n_critic)  # warm-up (allocator, lazy init)
    bare_times, trainer_times = [], []
    for repeat in range(args.repeats):
        bare_times.append(bare_loop(parts, args.iterations, args.n_critic))
        trainer_times.append(trainer_loop(parts, args.iterations, args.n_critic))
        print(
            f"repeat {repeat + 1}: bare {args.iterations / bare_times[-1]:.3f} it/s, "
            f"trainer {args.iterations / trainer_times[-1]:.3f} it/s"
        )
    bare, trainer = statistics.median(bare_times), statistics.median(trainer_times)
    print(
        f"\n{args.iterations} iterations x {args.repeats} repeats, {args.image_size} px, batch {args.batch_size}, "
        f"n_critic {args.n_critic}, {torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch loop : {args.iterations / bare:.3f} it/s (median)")
    print(f"ExaggerationTrainer: {args.iterations / trainer:.3f} it/s (median)")
    print(f"overhead ratio (trainer time / bare time): {trainer / bare:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
