"""Lightning training loop vs a plain PyTorch loop: same model, data, batch size, loss, optimiser (CPU).

Both loops train agir's `SegModule` network with its `SegLoss`, AdamW, the same per-step LR schedule
and gradient clipping, drawing batches from the same `SegDataModule` train loader over a generated
`dataset/` folder. The Lightning side runs `lightning.Trainer` configured as the train stage runs
it (progress bar, gradient clipping), with validation and checkpointing switched off so both time
training steps only. Rounds alternate (plain, Lightning, plain, ...) and the median ratio is
reported as the ratio of each side's best round (the least disturbed by other load), with the
median of the paired round ratios beside it.

    .venv/bin/python benchmarks/train_bench.py [--steps 12] [--repeats 3] [--crop 128] [--batch 4]

Prints `plain_steps_per_s=...`, `lightning_steps_per_s=...` and
`lightning_overhead=<plain / lightning>` (1.00 = no overhead; target <= 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from agir.images import write_image  # noqa: E402
from agir.masks import make_classes, write_classes, write_mask  # noqa: E402
from agir.runs import write_json  # noqa: E402
from agir.train.datamodule import SegDataModule, load_dataset_info  # noqa: E402
from agir.train.module import SegModule, lr_factor  # noqa: E402
from agir.train.stage import PROGRESS_REFRESH_STEPS, train_settings  # noqa: E402


def make_dataset(root: Path, n: int, size: int) -> Path:
    """Soil-coloured tiles with plant-coloured discs of two classes."""
    rng = np.random.default_rng(0)
    ds = root / "dataset"
    classes = make_classes(["barley", "maize"])
    write_classes(ds, classes)
    yy, xx = np.mgrid[:size, :size]
    lines = ["sample_id,split,image,mask"]
    for i in range(n):
        img = np.clip(rng.normal((120, 90, 60), 12, (size, size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for k, colour in ((1, (40, 200, 40)), (2, (220, 210, 40))):
            cy, cx = rng.integers(size // 5, 4 * size // 5, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2
            mask[disc], img[disc] = k, colour
        write_image(ds / "train/images" / f"s{i:03d}.jpg", img)
        write_mask(ds / "train/masks" / f"s{i:03d}.png", mask, classes)
        lines.append(f"s{i:03d},train,train/images/s{i:03d}.jpg,train/masks/s{i:03d}.png")
    (ds / "index.csv").write_text("\n".join(lines) + "\n")
    write_json(ds / "stats.json", {"mean": [0.4, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
                                   "class_pixel_frequencies": {"background": 0.8, "barley": 0.1, "maize": 0.1}})
    return ds


def build(tcfg: dict, info) -> SegModule:
    torch.manual_seed(0)
    meta = {
        "arch": tcfg["arch"], "encoder": tcfg["encoder"], "in_channels": 3, "classes": info.class_names,
        "head": "softmax", "normalization": {"mean": info.mean, "std": info.std},
        "input": {"tile_size": 256, "overlap": 0.0}, "config": tcfg, "class_weights": None,
    }
    return SegModule(meta)


def plain_loop(tcfg: dict, info, warm: int, steps: int, device: str) -> float:
    """Steps/s of a hand-written loop doing what Lightning's automatic optimisation does."""
    module = build(tcfg, info).to(device)
    model, criterion = module.model, module.criterion
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    total = warm + steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, 1, "cosine"))
    loader = SegDataModule(info, tcfg).train_dataloader()
    done, t0 = 0, None
    while done < total:
        for x, y, _ in loader:
            if done == warm:
                sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            opt.step()
            sched.step()
            done += 1
            if done % PROGRESS_REFRESH_STEPS == 0:
                print(f"\rloss {float(loss.detach()):.4f}", end="", file=sys.stderr)  # what the bar shows
            if done == total:
                break
    sync(device)
    return steps / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StepClock(Callback):
    def __init__(self, warm: int):
        self.warm, self.t0, self.t1 = warm, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warm and self.t0 is None:
            sync(str(pl_module.device))
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(str(pl_module.device))
        self.t1 = time.perf_counter()


def lightning_loop(tcfg: dict, info, warm: int, steps: int, device: str) -> float:
    module = build(tcfg, info)
    clock = StepClock(warm)
    trainer = L.Trainer(
        max_steps=warm + steps, max_epochs=-1, accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1, precision="32-true",
        gradient_clip_val=tcfg["grad_clip"], limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=True,
        callbacks=[clock, TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS)], log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=SegDataModule(info, tcfg))
    return steps / (clock.t1 - clock.t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="Unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per round")
    ap.add_argument("--warm", type=int, default=3, help="untimed steps per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = steady numbers on a shared box)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (both loops)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tcfg = train_settings({"train": {"arch": args.arch, "encoder": args.encoder, "crop_size": args.crop,
                                      "batch_size": args.batch, "num_workers": args.workers}})
    with tempfile.TemporaryDirectory() as tmp:
        info = load_dataset_info(make_dataset(Path(tmp), n=max(16, 2 * args.batch), size=2 * args.crop))
        plain, light = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(tcfg, info, args.warm, args.steps, args.device))
            light.append(lightning_loop(tcfg, info, args.warm, args.steps, args.device))
    ratios = [p / q for p, q in zip(plain, light)]
    print(f"model={args.arch}/{args.encoder} crop={args.crop} batch={args.batch} device={args.device} "
          f"threads={args.threads} workers={args.workers} steps={args.steps}x{args.repeats}")
    print(f"plain_steps_per_s={statistics.median(plain):.3f} (rounds: {', '.join(f'{v:.3f}' for v in plain)})")
    print(f"lightning_steps_per_s={statistics.median(light):.3f} (rounds: {', '.join(f'{v:.3f}' for v in light)})")
    # best round of each side: the one least disturbed by other load on the machine
    print(f"median_round_ratio={statistics.median(ratios):.3f}")
    print(f"lightning_overhead={max(plain) / max(light):.3f}")


if __name__ == "__main__":
    main()
