"""Train the reference photo-z model and export it to ONNX.

    pip install -e '.[train]'      # torch, onnx
    python scripts/train_reference_model.py [--samples 20000] [--epochs 30] [--seed 0]

It renders the *training* split (galaxies of SDSS_MGS.train, several realizations each),
trains a small network (an image CNN and a magnitude MLP, concatenated into an MLP head)
to predict the spectroscopic redshift, checks it on rendered *test* galaxies (SDSS_MGS.test,
never seen in training) with ONNX Runtime, and writes

    src/cosmicai/models/reference.onnx    the model: raw partition arrays in, redshift out
    src/cosmicai/models/reference.json    its card: data, settings, test metrics

Preprocessing lives inside the exported graph (asinh-scaled fluxes, standardised
magnitudes and colours), so the pipeline feeds partition arrays as they are stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = Path(__file__).resolve().parents[1] / "src" / "cosmicai" / "models"


def render(split: str, samples: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    from cosmicai.data.synth import render_split

    parts = list(render_split(split, samples, seed, os.cpu_count() or 1))  # type: ignore[arg-type]
    return {
        "images": np.concatenate([p.images for p in parts]),
        "magnitudes": np.concatenate([p.magnitudes for p in parts]),
        "redshift": np.concatenate([p.redshift for p in parts if p.redshift is not None]),
    }


def build_model(images: np.ndarray[Any, Any], magnitudes: np.ndarray[Any, Any]) -> Any:
    import torch
    from torch import nn

    # Normalisation constants from the training data, baked into the graph as buffers.
    softening = np.median(np.abs(images), axis=(0, 2, 3)) + 1e-3  # per band, nanomaggies
    scaled = np.arcsinh(images / softening[None, :, None, None])
    colours = magnitudes[:, :-1] - magnitudes[:, 1:]
    features = np.concatenate([magnitudes, colours], axis=1)

    class PhotoZ(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(
                "soft", torch.tensor(softening, dtype=torch.float32).view(1, 5, 1, 1)
            )
            self.register_buffer(
                "img_mean",
                torch.tensor(scaled.mean(axis=(0, 2, 3)), dtype=torch.float32).view(1, 5, 1, 1),
            )
            self.register_buffer(
                "img_std",
                torch.tensor(scaled.std(axis=(0, 2, 3)) + 1e-6, dtype=torch.float32).view(
                    1, 5, 1, 1
                ),
            )
            self.register_buffer(
                "feat_mean", torch.tensor(features.mean(axis=0), dtype=torch.float32)
            )
            self.register_buffer(
                "feat_std", torch.tensor(features.std(axis=0) + 1e-6, dtype=torch.float32)
            )
            self.cnn = nn.Sequential(
                nn.Conv2d(5, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.mlp = nn.Sequential(nn.Linear(9, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))

        def forward(self, image: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
            # asinh written out: the TorchScript ONNX exporter has no symbolic for aten::asinh.
            # The odd-symmetric form keeps precision for negative (noise) pixels.
            s = image / self.soft
            a = torch.sign(s) * torch.log(torch.abs(s) + torch.sqrt(s * s + 1.0))
            x = (a - self.img_mean) / self.img_std
            colours = magnitude[:, :-1] - magnitude[:, 1:]
            f = (torch.cat([magnitude, colours], dim=1) - self.feat_mean) / self.feat_std
            z = self.head(torch.cat([self.cnn(x), self.mlp(f)], dim=1))
            return z.squeeze(1)

    return PhotoZ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20000, help="training samples to render")
    parser.add_argument("--test-samples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODELS)
    args = parser.parse_args()

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    train = render("train", args.samples, seed=args.seed + 1000)
    test = render("test", args.test_samples, seed=args.seed + 2000)
    print(f"rendered {args.samples} train + {args.test_samples} test in {time.time() - t0:.0f} s")

    model = build_model(train["images"], train["magnitudes"])
    images = torch.from_numpy(train["images"])
    mags = torch.from_numpy(train["magnitudes"])
    z = torch.from_numpy(train["redshift"])
    # Hold out 10% of the training galaxies' samples to pick the best epoch.
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(args.seed))
    n_val = len(z) // 10
    val_idx, fit_idx = order[:n_val], order[n_val:]
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=2e-3, total_steps=args.epochs * (len(fit_idx) // args.batch_size + 1)
    )
    best: tuple[float, dict[str, Any]] = (float("inf"), {})
    for epoch in range(args.epochs):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx))]
        for start in range(0, len(perm), args.batch_size):
            idx = perm[start : start + args.batch_size]
            pred = model(images[idx], mags[idx])
            # Loss on Δz = (pred − z)/(1 + z), the quantity the metrics judge.
            loss = torch.nn.functional.smooth_l1_loss(
                (pred - z[idx]) / (1 + z[idx]), torch.zeros_like(pred), beta=0.02
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            pv = torch.cat(
                [
                    model(images[val_idx[i : i + 1024]], mags[val_idx[i : i + 1024]])
                    for i in range(0, n_val, 1024)
                ]
            )
        dz = ((pv - z[val_idx]) / (1 + z[val_idx])).numpy()
        nmad = 1.48 * float(np.median(np.abs(dz - np.median(dz))))
        mae = float(np.mean(np.abs(pv.numpy() - z[val_idx].numpy())))
        print(f"epoch {epoch + 1:2d}: validation MAE {mae:.4f} NMAD {nmad:.4f}", flush=True)
        if mae < best[0]:
            best = (mae, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    model.eval()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "reference.onnx"
    torch.onnx.export(
        model,
        (images[:2], mags[:2]),
        str(path),
        input_names=["image", "magnitude"],
        output_names=["redshift"],
        dynamic_axes={"image": {0: "batch"}, "magnitude": {0: "batch"}, "redshift": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )

    # Judge the exported file, as the pipeline will run it, on unseen test galaxies.
    from cosmicai.metrics import redshift_metrics
    from cosmicai.model import RedshiftModel

    onnx_model = RedshiftModel(path.read_bytes())
    pred = np.concatenate(
        [
            onnx_model.predict(test["images"][i : i + 512], test["magnitudes"][i : i + 512])
            for i in range(0, len(test["redshift"]), 512)
        ]
    )
    metrics = redshift_metrics(test["redshift"], pred)
    assert metrics is not None
    baseline = float(np.mean(np.abs(test["redshift"] - test["redshift"].mean())))
    with torch.no_grad():
        torch_pred = model(
            torch.from_numpy(test["images"][:256]), torch.from_numpy(test["magnitudes"][:256])
        )
    max_diff = float(np.max(np.abs(torch_pred.numpy() - pred[:256])))
    card = {
        "name": "reference",
        "description": "Small photo-z network (image CNN + magnitude/colour MLP) trained on "
        "cosmicai-rendered images of SDSS_MGS.train galaxies; a stand-in so the pipeline runs "
        "on a fresh clone. Not AstroMAE.",
        "inputs": {"image": "[B,5,32,32] float32 nanomaggies", "magnitude": "[B,5] float32 ugriz"},
        "output": {"redshift": "[B] float32"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            "split": "train (SDSS_MGS.train)",
            "samples": args.samples,
            "epochs": args.epochs,
            "render_seed": args.seed + 1000,
            "torch": torch.__version__,
        },
        "test": {
            "split": "test (SDSS_MGS.test)",
            "samples": args.test_samples,
            "render_seed": args.seed + 2000,
            **metrics.model_dump(),
            "mae_of_predicting_mean": baseline,
        },
        "onnx_vs_torch_max_abs_diff": max_diff,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    (args.out / "reference.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["test"], indent=2))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
