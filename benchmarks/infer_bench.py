"""Tiled inference speed: agir's TiledPredictor against three peers measured in the same run.

Same randomly initialised smp Unet (resnet34, 2 outputs: background + plant), same image (a
2200 x 1465 SemiField photo from ../shared/data/semif_examples), tile 512, overlap 0.25, and agir
in its *default* configuration for the device it runs on: `seg_inference.batch_size` as
config/config.yaml sets it (auto: 1 tile per pass on a CPU, sized to free memory on a GPU) and
BatchNorm folded into the convolutions. The peers get the batch size agir resolved to:

- tiled_vs_pure_forward: agir wall time / the forward time alone of the network agir runs (its
  folded copy) on exactly the tile batches agir ran (pre-normalised tensors, nothing else timed).
  Target <= 1.15.
- agir_vs_monai: agir / MONAI `sliding_window_inference` (gaussian blending, same roi, overlap and
  batch size; timing includes turning the image into a normalised tensor and the argmax, as
  agir's does). Target <= 1.0.
- agir_vs_batch1_loop: agir / a loop feeding one tile per forward pass and averaging overlaps, as
  the original tool did. Target <= 0.95 on a CPU, <= 0.5 on a GPU (`--device cuda`).

`--batch-size N` measures an explicit batch size instead of the default; `--ablate` adds agir
without BatchNorm folding (`agir_nofold`) to the interleaved runs, to show what folding buys.
Besides wall time, each run's process CPU time is reported (less sensitive to other processes'
load on a shared machine, though it counts threads spinning while they wait).

Each method runs `--repeats` times, interleaved (each repeat starts one method later), after one
warm-up; the ratios use the median run of each (robust to load that comes and goes on a shared
machine); ratios of the best runs and of median CPU times follow. The model object is shared
(agir runs its BatchNorm-folded copy), so every method sees the same weights and memory format. On CUDA every method runs under the
same float16 autocast and timings are synchronised.

    .venv/bin/python benchmarks/infer_bench.py [--device cpu|cuda] [--repeats 3] [--threads N] [--image PATH]
        [--batch-size auto|N] [--ablate]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from agir.checkpoint import build_model
from agir.config import load_config
from agir.images import read_image
from agir.infer.predictor import TiledPredictor, resolve_device
from agir.tiling import tile_grid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / ".." / "shared" / "data" / "semif_examples" / "horseweed.jpg"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def normalise(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", default=None, help="default: seg_inference.batch_size of config/config.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ablate", action="store_true", help="also time agir without BatchNorm folding")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from monai.inferers import sliding_window_inference  # benchmark-only dependency

    device = resolve_device(args.device)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    rgb = read_image(args.image)
    h, w = rgb.shape[:2]
    torch.manual_seed(0)
    # channels_last as agir's predictor runs it, so the peers see the same memory format
    model = build_model("Unet", args.encoder, 3, 2).to(device).eval().to(memory_format=torch.channels_last)
    batch_size = args.batch_size or load_config()["seg_inference"]["batch_size"]
    common = dict(head="softmax", mean=MEAN, std=STD, tile_size=args.tile, overlap=args.overlap,
                  batch_size=batch_size if batch_size == "auto" else int(batch_size), blend="gaussian", device=device)
    predictor = TiledPredictor(model, **common)
    tiles = tile_grid(h, w, args.tile, args.overlap)
    _, info = predictor.predict(rgb)  # warm-up; also resolves batch_size "auto" for this device and tile shape
    bs = int(info["batch_size"])

    def run_agir() -> np.ndarray:
        mask, _ = predictor.predict(rgb)
        return mask

    unfolded = TiledPredictor(model, fold_bn=False, **common) if args.ablate else None

    def run_agir_nofold() -> np.ndarray:
        mask, _ = unfolded.predict(rgb)
        return mask

    # the exact batches agir runs, prepared outside the timed region
    full = normalise(rgb, device)
    batches = [torch.cat([full[:, :, t.y0:t.y1, t.x0:t.x1] for t in tiles[i:i + bs]]).contiguous(
        memory_format=torch.channels_last) for i in range(0, len(tiles), bs)]

    def run_forward() -> None:
        with torch.inference_mode(), amp:
            for b in batches:
                predictor.model(b)

    def run_monai() -> np.ndarray:
        with torch.inference_mode(), amp:
            x = normalise(rgb, device)
            out = sliding_window_inference(x, (args.tile, args.tile), bs, model, overlap=args.overlap,
                                           mode="gaussian", sigma_scale=0.125)
            return out.argmax(1)[0].to(torch.uint8).cpu().numpy()

    def run_batch1() -> np.ndarray:
        acc = np.zeros((2, h, w), dtype=np.float32)
        count = np.zeros((h, w), dtype=np.float32)
        with torch.inference_mode(), amp:
            for t in tiles:
                x = normalise(np.ascontiguousarray(rgb[t.y0:t.y1, t.x0:t.x1]), device)
                p = torch.softmax(model(x).float(), dim=1)[0].cpu().numpy()
                acc[:, t.y0:t.y1, t.x0:t.x1] += p
                count[t.y0:t.y1, t.x0:t.x1] += 1
        return (acc / count).argmax(0).astype(np.uint8)

    methods = {"agir": run_agir, "pure_forward": run_forward, "monai": run_monai, "batch1_loop": run_batch1}
    if args.ablate:
        methods["agir_nofold"] = run_agir_nofold
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    results = {}
    print(f"image {Path(args.image).name} {w}x{h}, Unet/{args.encoder}, tile {args.tile}, overlap {args.overlap}, "
          f"batch_size {batch_size} -> {bs}, BatchNorm folded: {predictor.folded_bn} layer(s), {len(tiles)} tiles, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    run_forward()  # warm-up (allocator, kernels)
    order = list(methods)
    for rep in range(args.repeats):
        # each repeat starts one method later, so load that rises or falls through a repeat favours none
        for name in order[rep % len(order):] + order[:rep % len(order)]:
            fn = methods[name]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if out is not None:
                results[name] = out
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s (cpu {cpu[k][-1]:.1f})" for k, v in times.items()))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    for k in times:
        print(f"{k:13s} median {med[k]:.3f} s  best {best[k]:.3f} s  (cpu median {cmed[k]:.3f} s)")
    peers = [k for k in ("monai", "batch1_loop", "agir_nofold") if k in results]
    agree = {k: float((results["agir"] == results[k]).mean()) for k in peers}
    print("mask agreement with agir: " + ", ".join(f"{k} {v:.4f}" for k, v in agree.items()))
    target = "0.5" if device.type == "cuda" else "0.95"
    # medians: on a shared machine load comes and goes in both directions, so the median of
    # interleaved repeats is the robust figure; the ratios of best times are printed for reference
    print(f"tiled_vs_pure_forward = {med['agir'] / med['pure_forward']:.3f}   (target <= 1.15)")
    print(f"agir_vs_monai = {med['agir'] / med['monai']:.3f}   (target <= 1.0)")
    print(f"agir_vs_batch1_loop = {med['agir'] / med['batch1_loop']:.3f}   (target <= {target})")
    print(f"(from best times: tiled_vs_pure_forward {best['agir'] / best['pure_forward']:.3f}, agir_vs_monai "
          f"{best['agir'] / best['monai']:.3f}, agir_vs_batch1_loop {best['agir'] / best['batch1_loop']:.3f})")
    print(f"(from median CPU times: tiled_vs_pure_forward {cmed['agir'] / cmed['pure_forward']:.3f}, agir_vs_monai "
          f"{cmed['agir'] / cmed['monai']:.3f}, agir_vs_batch1_loop {cmed['agir'] / cmed['batch1_loop']:.3f})")
    if args.ablate:
        print(f"agir_vs_agir_nofold = {med['agir'] / med['agir_nofold']:.3f}   (BatchNorm folding; cpu "
              f"{cmed['agir'] / cmed['agir_nofold']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
