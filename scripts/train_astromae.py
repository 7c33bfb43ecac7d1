"""Train AstroMAE for photo-z on the rendered training split, within a CPU time budget.

    pip install -e '.[astromae]'    # torch, onnx
    nice -n 5 python scripts/train_astromae.py --out build/astromae [--samples 20000] [--minutes 40]

It renders the *training* split (SDSS_MGS.train galaxies, several realizations each; cached as
.npz under --cache), fits the in-network preprocessing on it, and trains with AdamW, a warm-up
and cosine decay, and a smooth-L1 loss on Δz = (z_pred − z)/(1 + z). 10% of the training
galaxies (catalogue rows, with all their realizations) are held out to pick the best epoch; the
test split is never seen here (the export and quantize commands judge the model on it).

The ViT encoder is frozen, as in AstroMAE's fine-tuning — but at its random initialisation,
because masked-autoencoder pretraining is far beyond a 2-core budget. Its pooled features are
therefore computed once, and training runs the trainable 10.4M parameters (ViT head, Inception
branch, magnitude MLP, joint head). Someone with a pretrained encoder loads it with
--encoder CHECKPOINT and trains the same way.

The number of epochs follows from --minutes: the first steps are timed and the schedule is
sized to fit. A checkpoint is written after every epoch (last.pt, best.pt), so a cut run still
yields a model; training.json records data, settings, wall and CPU time.

--resume CHECKPOINT continues from a checkpoint of this script (same --samples and --seed, so
the same validation samples and cached encoder features): its fitted preprocessing and weights
are kept and a fresh warm-up + cosine schedule runs from --lr down to --final-lr-factor × --lr.
--augment applies a random symmetry of the square (flips, transpose) to each image for the
trained CNN branch, since a galaxy's redshift does not depend on its orientation.

Regularisation, because realizations repeat each galaxy's magnitudes and redshift exactly and
the magnitude MLP can memorise the 5,000 magnitude vectors: --magnitude-noise K perturbs the
training magnitudes every step by Gaussian noise of K × the catalogue's own error of each
magnitude; --dropout P drops activations after every ReLU of the magnitude MLP, ViT head and
joint head; --weight-decay sets AdamW's decay. All three act in training only.
--no-val-by-galaxy restores the older sample-level hold-out (needed to compare with runs made
before it, and with --resume of a checkpoint trained that way, which has fitted the galaxies
the galaxy-disjoint hold-out would choose).

--colour-basis feeds the magnitude MLP r and the four adjacent colours, each standardised,
instead of the five standardised magnitudes (AstroMAEConfig.colour_basis; inside the exported
graph). This, not the regularisers, is what brought AstroMAE to the reference CNN's accuracy;
the shipped model was trained with

    python scripts/train_astromae.py --out build/astromae --samples 20000 --threads 1 \
        --minutes 8 --max-epochs 5 --colour-basis --no-val-by-galaxy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmicai.astromae.checkpoint import save_checkpoint
from cosmicai.astromae.network import AstroMAE, AstroMAEConfig

Arrays = dict[str, np.ndarray[Any, Any]]


def rendered(split: str, samples: int, seed: int, cache: Path, processes: int) -> Arrays:
    path = cache / f"{split}_{samples}_s{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in ("images", "magnitudes", "redshift")}
    from cosmicai.data.synth import render_split

    parts = list(render_split(split, samples, seed, processes))  # type: ignore[arg-type]
    data = {
        "images": np.concatenate([p.images for p in parts]),
        "magnitudes": np.concatenate([p.magnitudes for p in parts]),
        "redshift": np.concatenate([p.redshift for p in parts if p.redshift is not None]),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def encoder_features(model: AstroMAE, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pooled, normalised ViT tokens (the frozen part), in fp32 as inference computes them."""
    vit = model.vit
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            t = vit.patch_embed(x[i : i + batch]).flatten(2).transpose(1, 2)
            t = torch.cat([vit.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + vit.pos_embed
            out.append(vit.norm(vit.blocks(t)[:, 1:].mean(dim=1)))
            if (i // batch) % 20 == 0:
                print(f"  encoder features {i + len(t)}/{len(x)}", flush=True)
    return torch.cat(out)


def run_mlp(layers: torch.nn.Sequential, h: torch.Tensor, dropout: float) -> torch.Tensor:
    """The layers in order, with dropout after every ReLU when ``dropout`` > 0.

    Dropout is applied here rather than as modules in the network: inserting nn.Dropout into
    the Sequentials would renumber their layers and break loading of existing checkpoints and
    of CosmicAI's pickled model, and the exported graph must not change.
    """
    for layer in layers:
        h = layer(h)
        if dropout > 0 and isinstance(layer, torch.nn.ReLU):
            h = torch.nn.functional.dropout(h, dropout, training=True)
    return h


def forward_trainable(
    model: AstroMAE,
    features: torch.Tensor,
    x: torch.Tensor,
    m: torch.Tensor,
    dropout: float = 0.0,
) -> torch.Tensor:
    joined = torch.cat(
        [
            run_mlp(model.vit.head, features, dropout),
            model.cnn(x),
            run_mlp(model.magnitude_mlp, m, dropout),
        ],
        dim=1,
    )
    return run_mlp(model.head, joined, dropout).squeeze(1)


def catalogue_rows(magnitudes: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], ...]:
    """Catalogue row of each rendered training sample, and the catalogue's magnitude errors.

    Sample i is row i % N of SDSS_MGS.train (cosmicai.data.synth); checked against the rendered
    magnitudes, so a change of that layout fails here rather than pairing the wrong errors.
    """
    from cosmicai.data.catalogue import load_catalogue

    catalogue = load_catalogue("train")
    rows = np.arange(len(magnitudes)) % len(catalogue)
    if not np.array_equal(magnitudes, catalogue.magnitudes[rows]):
        raise SystemExit("rendered magnitudes are not SDSS_MGS.train rows i % N; see synth.py")
    return rows, np.asarray(catalogue.magnitude_errors)


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image [B,C,H,W] flipped / transposed at random: one of the 8 symmetries."""
    flips = torch.rand(3, x.shape[0], 1, 1, 1, generator=generator) < 0.5
    x = torch.where(flips[0], x.flip(3), x)
    x = torch.where(flips[1], x.flip(2), x)
    return torch.where(flips[2], x.transpose(2, 3), x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints")
    parser.add_argument("--samples", type=int, default=20000, help="training samples to render")
    parser.add_argument("--minutes", type=float, default=40.0, help="training time budget")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (AMX CPUs)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=Path("build/rendered"))
    parser.add_argument("--encoder", type=Path, help="checkpoint whose ViT encoder to use")
    parser.add_argument("--resume", type=Path, help="checkpoint of this script to continue")
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--final-lr-factor", type=float, default=0.02, help="end of the cosine")
    parser.add_argument("--augment", action="store_true", help="random flips and transposes")
    parser.add_argument(
        "--magnitude-noise",
        type=float,
        default=0.0,
        help="add Gaussian noise of this many × each galaxy's catalogue magnitude errors to "
        "the training magnitudes, drawn anew every step (0: off)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout after each ReLU of the magnitude MLP, ViT head and joint head (training "
        "only; the network and its export are unchanged)",
    )
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument(
        "--val-by-galaxy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold out 10%% of the catalogue's galaxies with all their realizations (default); "
        "--no-val-by-galaxy holds out 10%% of the samples, so other realizations of the "
        "validation galaxies are fitted",
    )
    parser.add_argument(
        "--colour-basis",
        action="store_true",
        help="magnitude MLP input: r and the four adjacent colours, standardised",
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), cpu_seconds()
    train = rendered("train", args.samples, args.seed + 1000, args.cache, args.threads)
    print(f"train split: {args.samples} samples ready in {time.time() - t0:.0f} s", flush=True)

    model = AstroMAE(AstroMAEConfig(colour_basis=args.colour_basis))
    if args.encoder:
        from cosmicai.astromae.checkpoint import load_checkpoint

        source = load_checkpoint(args.encoder)
        model.vit.load_state_dict(source.vit.state_dict())
    if args.resume:
        from cosmicai.astromae.checkpoint import load_checkpoint

        model = load_checkpoint(args.resume)
    else:
        model.preprocess.fit(train["images"], train["magnitudes"])
    with torch.no_grad():
        x, m = model.preprocess(
            torch.from_numpy(train["images"]), torch.from_numpy(train["magnitudes"])
        )
    z = torch.from_numpy(train["redshift"]).float()
    encoder = [model.vit.patch_embed, model.vit.blocks, model.vit.norm]
    for part in encoder:
        part.requires_grad_(False)
    model.vit.cls_token.requires_grad_(False)
    model.vit.pos_embed.requires_grad_(False)

    t1 = time.time()
    model.eval()
    # The encoder's initialisation follows from --seed, so its features can be cached too.
    feature_cache = args.cache / f"features_{args.samples}_s{args.seed}.pt"
    if args.encoder is None and feature_cache.exists():
        features = torch.load(feature_cache, weights_only=True)
    else:
        features = encoder_features(model, x)
        if args.encoder is None:
            torch.save(features, feature_cache)
    feature_seconds = time.time() - t1
    print(f"frozen encoder features in {feature_seconds:.0f} s", flush=True)

    rows, magnitude_errors = catalogue_rows(train["magnitudes"])
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(args.seed))
    if args.val_by_galaxy:
        # Realizations of one galaxy share its magnitudes and redshift, so a sample-level
        # split lets the fit set memorise the validation galaxies; hold out whole rows.
        n_rows = len(magnitude_errors)
        held = torch.randperm(n_rows, generator=torch.Generator().manual_seed(args.seed))
        is_val = torch.zeros(n_rows, dtype=torch.bool)
        is_val[held[: n_rows // 10]] = True
        in_val = is_val[torch.from_numpy(rows)][order]
        val_idx, fit_idx = order[in_val], order[~in_val]
    else:
        n_val = len(z) // 10
        val_idx, fit_idx = order[:n_val], order[n_val:]
    n_val = len(val_idx)
    # Noise on the raw magnitudes, σ = k × catalogue error, is noise of σ / std in the
    # standardised inputs the network sees (the preprocessing is affine), so it is added there.
    noise_scale = torch.from_numpy(
        args.magnitude_noise * magnitude_errors[rows] / model.preprocess.magnitude_std.numpy()
    ).float()
    noise_rng = torch.Generator().manual_seed(args.seed + 2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(fit_idx) / args.batch_size)
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))
    floor = args.final_lr_factor
    plan = {"total": args.max_epochs * steps_per_epoch}

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, plan["total"] - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    epochs = args.max_epochs
    budget_start = time.time()
    history: list[dict[str, float]] = []
    best_mae = float("inf")
    step = 0
    augment_rng = torch.Generator().manual_seed(args.seed + 1)
    for epoch in range(args.max_epochs):
        if epoch >= epochs:
            break
        model.train()
        model.vit.eval()
        perm = fit_idx[torch.randperm(len(fit_idx))]
        epoch_start = time.time()
        for start in range(0, len(perm), args.batch_size):
            idx = perm[start : start + args.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                xb = dihedral(x[idx], augment_rng) if args.augment else x[idx]
                mb = m[idx]
                if args.magnitude_noise > 0:
                    mb = mb + noise_scale[idx] * torch.randn(mb.shape, generator=noise_rng)
                pred = forward_trainable(model, features[idx], xb, mb, args.dropout).float()
            loss = torch.nn.functional.smooth_l1_loss(
                (pred - z[idx]) / (1 + z[idx]), torch.zeros_like(pred), beta=0.02
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if step == 20 and epoch == 0:
                # Size the schedule to the budget from the measured step time.
                per_step = (time.time() - budget_start) / 20
                fit = int(args.minutes * 60 / (per_step * steps_per_epoch * 1.08))
                epochs = max(1, min(args.max_epochs, fit))
                plan["total"] = epochs * steps_per_epoch
                print(f"{per_step:.2f} s/step: planning {epochs} epochs", flush=True)
        model.eval()
        with torch.no_grad():
            pv = torch.cat(
                [forward_trainable(model, features[j], x[j], m[j]) for j in val_idx.split(1024)]
            )
        dz = ((pv - z[val_idx]) / (1 + z[val_idx])).numpy()
        nmad = 1.48 * float(np.median(np.abs(dz - np.median(dz))))
        mae = float(np.mean(np.abs(pv.numpy() - z[val_idx].numpy())))
        history.append(
            {"epoch": epoch + 1, "val_mae": mae, "val_nmad": nmad, "seconds": time.time() - t0}
        )
        print(
            f"epoch {epoch + 1:2d}/{epochs}: val MAE {mae:.4f} NMAD {nmad:.4f} "
            f"({time.time() - epoch_start:.0f} s, lr {schedule.get_last_lr()[0]:.2e})",
            flush=True,
        )
        save_checkpoint(model, args.out / "last.pt")
        if mae < best_mae:
            best_mae = mae
            save_checkpoint(model, args.out / "best.pt")
        record = {
            "split": "train (SDSS_MGS.train)",
            "samples": args.samples,
            "validation_samples": n_val,
            "render_seed": args.seed + 1000,
            "epochs_planned": epochs,
            "epochs_done": epoch + 1,
            "batch_size": args.batch_size,
            "validation": "galaxy-disjoint (10% of catalogue rows, all realizations)"
            if args.val_by_galaxy
            else "10% of samples (other realizations of those galaxies are fitted)",
            "optimiser": f"AdamW lr {args.lr} wd {args.weight_decay}, warm-up + cosine to "
            f"{args.final_lr_factor} × lr",
            "magnitude_noise": f"{args.magnitude_noise} × catalogue magnitude errors"
            if args.magnitude_noise > 0
            else None,
            "dropout": args.dropout,
            "colour_basis": args.colour_basis,
            "resumed_from": str(args.resume) if args.resume else None,
            "augment": "random flips and transposes" if args.augment else None,
            "loss": "smooth L1 (beta 0.02) on Δz",
            "bf16_autocast": args.bf16,
            "frozen": "ViT encoder (random init)" if not args.encoder else str(args.encoder),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "encoder_feature_seconds": feature_seconds,
            "wall_seconds": time.time() - t0,
            "cpu_seconds": cpu_seconds() - c0,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "best_val_mae": best_mae,
            "history": history,
        }
        (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"done in {time.time() - t0:.0f} s wall, {cpu_seconds() - c0:.0f} s CPU", flush=True)


if __name__ == "__main__":
    main()
