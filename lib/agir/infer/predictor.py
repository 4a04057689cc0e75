"""Tiled, batched, blended inference of a segmentation network over images of any size.

Tiles come from `agir.tiling.tile_grid` (the tiler preprocess uses too), go to the network in
batches of `batch_size`, and their probabilities are merged with a smooth window (Gaussian or
Hann) so seams do not show. `batch_size="auto"` (the default) is 1 on a CPU, where batching
measured slower (benchmarks/infer_bench.py), and on a GPU as many tiles as half the free memory
holds (measured on the first tile of each shape, capped at MAX_AUTO_BATCH). Every tile has the same shape: `min(H, size) x min(W, size)`, padded
(edge-replicated) only up to the network's divisor, so an image smaller than a tile runs once
at nearly its own size.

Memory stays bounded on 60-130 MP frames: tiles are visited row by row and only a strip one tile
high is accumulated (float32, on the model's device); rows that no later tile touches are
finalised into the uint8 output (argmax, or sigmoid >= threshold) and the strip moves down.
For a 9560 x 6368 frame with 2 classes that strip is ~60 MB instead of ~0.7 GB of full maps.
A `stats` accumulator passed to `predict` gets each finalised band's normalised probabilities, so
per-image uncertainty costs neither a full-frame probability map nor a second pass.

BatchNorm layers that directly follow a convolution are folded into it (inference only, on a
copy of the model, so the caller's model is left untouched and later changes to it are not seen),
which saves one pass over every
activation map on a CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import numpy as np
import torch

from agir.errors import AgirError
from agir.tiling import check_tile_settings, round_up, tile_grid

BLENDS = ("gaussian", "hann")
MAX_AUTO_BATCH = 16  # beyond this a GPU gains nothing measurable and a strip of tiles waits longer


class BandStats(Protocol):
    """What `predict(stats=...)` feeds: e.g. agir.select.uncertainty.UncertaintyAccumulator."""

    def add(self, probs: Any) -> None: ...


def check_batch_size(value: Any) -> int | str:
    """`auto` or an integer >= 1 (seg_inference.batch_size), else a one-line error."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
        ok = n >= 1 and not isinstance(value, bool) and float(value) == n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AgirError(f"seg_inference.batch_size={value!r}: use auto or an integer >= 1")
    return n


def gpu_batch_size(per_tile_bytes: float, free_bytes: float, n_tiles: int | None = None,
                   cap: int = MAX_AUTO_BATCH) -> int:
    """Tiles per forward pass that fit in half the free device memory (at least 1, at most `cap`)."""
    fit = int(0.5 * free_bytes // max(per_tile_bytes, 1.0))
    limit = cap if n_tiles is None else min(cap, max(1, n_tiles))
    return max(1, min(fit, limit))


def resolve_device(spec: str | None) -> torch.device:
    """`auto|cpu|cuda|cuda:N` -> torch.device (CUDA_VISIBLE_DEVICES is the user's, never touched)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AgirError(f"seg_inference.device={spec}: no CUDA device is visible; use device=cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AgirError(
                f"seg_inference.device={spec}: only {torch.cuda.device_count()} CUDA device(s) visible; use cuda:0..."
            )
        return dev
    raise AgirError(f"seg_inference.device={spec!r}: use auto, cpu, cuda or cuda:N")


def window_1d(n: int, kind: str) -> np.ndarray:
    """A smooth weight profile of length n, largest in the middle, never zero (edges still count)."""
    if kind not in BLENDS:
        raise AgirError(f"seg_inference.blend={kind!r}: use one of {', '.join(BLENDS)}")
    pos = np.arange(n, dtype=np.float64) + 0.5
    if kind == "gaussian":
        sigma = 0.125 * n  # MONAI's default sigma_scale, so the comparison benchmark is like for like
        w = np.exp(-0.5 * ((pos - n / 2.0) / sigma) ** 2)
    else:
        w = 0.5 - 0.5 * np.cos(2.0 * np.pi * pos / n)
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def blend_window(height: int, width: int, kind: str = "gaussian") -> np.ndarray:
    return np.outer(window_1d(height, kind), window_1d(width, kind)).astype(np.float32)


def fold_batchnorm(model: torch.nn.Module, probe: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm2d fed directly by a Conv2d into that convolution, in place.

    The pairs are found by running `probe` once with hooks: a BatchNorm whose input is exactly the
    output tensor of a convolution called just before it (and of no other module). Returns the
    number of folded pairs. The caller checks the outputs still agree.
    """
    calls: list[tuple[torch.nn.Module, int, int]] = []  # (module, id(input), id(output)) in call order
    keep: list[torch.Tensor] = []  # every seen tensor stays alive during the probe, so no id is reused
    hooks = []

    def hook(mod, args, out):
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            keep.extend((args[0], out))
            calls.append((mod, id(args[0]), id(out)))

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    # a BN is folded only into the convolution called just before it whose output it takes as is
    pairs: dict[int, tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]] = {}
    uses: dict[int, int] = {}
    for mod, _, _ in calls:
        uses[id(mod)] = uses.get(id(mod), 0) + 1
    for (prev, _, prev_out), (mod, mod_in, _) in zip(calls, calls[1:]):
        if (isinstance(mod, torch.nn.BatchNorm2d) and isinstance(prev, torch.nn.Conv2d) and prev_out == mod_in
                and uses[id(mod)] == 1 and uses[id(prev)] == 1 and mod.track_running_stats
                and mod.running_mean is not None and not mod.training):
            pairs[id(mod)] = (prev, mod)
    keep.clear()
    if not pairs:
        return 0
    folded = {id(bn) for _, bn in pairs.values()}
    with torch.no_grad():
        for conv, bn in pairs.values():
            inv = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
                bn.running_var + bn.eps)
            w = conv.weight * inv.view(-1, 1, 1, 1)
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            b = (b - bn.running_mean) * inv + (bn.bias if bn.affine else 0.0)
            conv.weight.copy_(w)
            conv.bias = torch.nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)
    # swap the folded BatchNorms for identities wherever they hang in the module tree
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if id(child) in folded:
                setattr(parent, name, torch.nn.Identity())
    return len(pairs)


def model_divisor(model: torch.nn.Module, default: int = 32) -> int:
    """The size every input side must be a multiple of (smp encoders expose output_stride)."""
    enc = getattr(model, "encoder", None)
    stride = getattr(enc, "output_stride", None)
    try:
        return max(1, int(stride)) if stride else default
    except (TypeError, ValueError):
        return default


class TiledPredictor:
    """Predict a class-index mask for an RGB uint8 image with a segmentation network.

    head "softmax": `num_outputs` = K+1 channels, channel 0 background, result = argmax of the
    window-weighted mean of per-tile softmax. head "sigmoid": one channel, result = 1 where the
    weighted mean probability >= `threshold`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        head: str,
        mean: Sequence[float],
        std: Sequence[float],
        tile_size: int,
        overlap: float,
        batch_size: int | str = "auto",
        blend: str = "gaussian",
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        divisor: int | None = None,
        amp: bool = True,
        channels_last: bool = True,
        fold_bn: bool = True,
    ) -> None:
        check_tile_settings(int(tile_size), float(overlap), "seg_inference.tile")
        if head not in ("softmax", "sigmoid"):
            raise AgirError(f"unknown model head {head!r}; expected softmax or sigmoid")
        window_1d(2, blend)  # validates the name early
        batch_size = check_batch_size(batch_size)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.folded_bn = 0
        if fold_bn and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            self.model, self.folded_bn = self._folded(self.model, divisor or model_divisor(model))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.head = head
        self.tile_size = int(tile_size)
        self.overlap = float(overlap)
        # "auto": 1 on a CPU (batching measured slower there); on a GPU sized per tile shape in predict
        self.batch_size = batch_size if batch_size != "auto" else (1 if self.device.type != "cuda" else "auto")
        self._auto_batch: dict[tuple[int, int], int] = {}
        self.blend = blend
        self.threshold = float(threshold)
        self.divisor = divisor or model_divisor(model)
        self.amp = bool(amp) and self.device.type == "cuda"
        # mean/std are in [0, 1] units of RGB/255; values above 1 are taken as 0-255 units.
        m = np.asarray(mean, dtype=np.float32)
        s = np.asarray(std, dtype=np.float32)
        scale = 1.0 if m.max() > 1.0 or s.max() > 1.0 else 255.0
        self._scale = torch.tensor(1.0 / (s * scale), device=self.device).view(1, -1, 1, 1)
        self._shift = torch.tensor(-m / s, device=self.device).view(1, -1, 1, 1)
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def _folded(self, model: torch.nn.Module, divisor: int) -> tuple[torch.nn.Module, int]:
        """A copy of `model` with Conv+BN folded, kept only if its output matches the original's."""
        try:
            copy_ = copy.deepcopy(model)
            first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            side = round_up(64, divisor)
            probe = torch.rand((1, first.in_channels, side, side), generator=torch.Generator().manual_seed(0))
            probe = probe.to(self.device, first.weight.dtype)
            n = fold_batchnorm(copy_, probe)
            if n == 0:
                return model, 0
            with torch.inference_mode():
                ref, got = model(probe).float(), copy_(probe).float()
            if ref.shape != got.shape or (ref - got).abs().max().item() > 1e-3 * max(1.0, ref.abs().max().item()):
                return model, 0  # a graph the hook heuristic misread: keep the model as it is
            return copy_.eval(), n
        except Exception:  # folding is an optimisation only; any model it cannot handle runs unfolded
            return model, 0

    def _batch_for(self, th: int, tw: int, n_tiles: int) -> int | None:
        """Tiles per forward pass for this tile shape; None = auto on a GPU, not measured yet."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        return self._auto_batch.get((th, tw))

    def _measure_batch(self, th: int, tw: int, n_tiles: int, peak_bytes: int, base_bytes: int) -> None:
        free, _ = torch.cuda.mem_get_info(self.device)
        per_tile = max(peak_bytes - base_bytes, 1)
        self._auto_batch[(th, tw)] = gpu_batch_size(per_tile, free + torch.cuda.memory_reserved(self.device)
                                                    - torch.cuda.memory_allocated(self.device), n_tiles)

    def _window(self, h: int, w: int) -> torch.Tensor:
        key = (h, w)
        if key not in self._windows:
            self._windows[key] = torch.from_numpy(blend_window(h, w, self.blend)).to(self.device)
        return self._windows[key]

    def _forward(self, batch: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        """uint8 (B, th, tw, C) on the device -> probabilities (B, outputs, th, tw) float32."""
        # NHWC permuted to NCHW is already channels_last in memory: no copy for the network's layout
        x = torch.addcmul(self._shift, batch.permute(0, 3, 1, 2).float(), self._scale)  # (x - mean) / std, one pass
        ph, pw = round_up(th, self.divisor), round_up(tw, self.divisor)
        if ph != th or pw != tw:
            x = torch.nn.functional.pad(x, (0, pw - tw, 0, ph - th), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            logits = self.model(x)
        logits = logits[:, :, :th, :tw].float()
        return torch.sigmoid(logits) if self.head == "sigmoid" else torch.softmax(logits, dim=1)

    @staticmethod
    def _argmax(a: torch.Tensor) -> torch.Tensor:
        """Channel argmax as uint8 by running comparisons: much faster than argmax(dim=0) on CPU strips."""
        if a.shape[0] == 2:
            return (a[1] > a[0]).to(torch.uint8)
        best = a[0].clone()
        idx = torch.zeros(a.shape[1:], dtype=torch.uint8, device=a.device)
        for c in range(1, a.shape[0]):
            better = a[c] > best
            idx.masked_fill_(better, c)
            torch.maximum(best, a[c], out=best)
        return idx

    # ------------------------------------------------------------------ public
    def predict(self, rgb: np.ndarray, return_probs: bool = False,
                stats: BandStats | None = None, return_shape: bool = False) -> tuple[np.ndarray, dict]:
        """(uint8 mask of class indices, info) — with return_probs, info["probs"] is the (C, H, W) map.

        `stats.add(band)` is called with each finalised (C, rows, W) band of normalised probabilities
        (sigmoid head: C = 1, the foreground probability), top to bottom, once per pixel row.
        With `return_shape`, info["shape"] is the uint8 0/1 plant shape whatever the species:
        1 - P(background) >= threshold (softmax), the thresholded probability (sigmoid).
        """
        if rgb.ndim != 3:
            raise AgirError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        tiles = tile_grid(h, w, self.tile_size, self.overlap)
        th, tw = tiles[0].height, tiles[0].width
        window = self._window(th, tw)
        started = time.perf_counter()
        model_s = 0.0
        # the whole frame goes to the device once (a view on CPU); the mask is assembled there too
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        out = torch.empty((h, w), dtype=torch.uint8, device=self.device)
        shape_out = torch.empty((h, w), dtype=torch.uint8, device=self.device) if return_shape else None
        # argmax does not need the normaliser; probabilities (returned, for stats or the shape) do
        need_wsum = self.head == "sigmoid" or return_probs or stats is not None or return_shape
        probs_out = None
        acc = wsum = None
        buf_y0 = 0

        def finalize(y_end: int) -> None:
            nonlocal buf_y0, acc, wsum
            n = y_end - buf_y0
            if n <= 0:
                return
            a = acc[:, :n]
            band = a / wsum[:n] if (return_probs or stats is not None) else None
            if self.head == "sigmoid":
                prob = band[0] if band is not None else a[0] / wsum[:n]
                out[buf_y0:y_end] = (prob >= self.threshold).to(torch.uint8)
            else:
                out[buf_y0:y_end] = self._argmax(a)
            if shape_out is not None:
                if self.head == "sigmoid":
                    shape_out[buf_y0:y_end] = out[buf_y0:y_end]
                else:  # plant of any species, also one the model splits over several known classes
                    p_bg = band[0] if band is not None else a[0] / wsum[:n]
                    shape_out[buf_y0:y_end] = (p_bg <= 1.0 - self.threshold).to(torch.uint8)
            if return_probs:
                probs_out[:, buf_y0:y_end] = band.cpu().numpy()
            if stats is not None:
                stats.add(band)
            # slide the strip down: rows [n, th) become rows [0, th - n)
            keep = acc.shape[1] - n
            if keep > 0:
                acc[:, :keep] = acc[:, n:].clone()
                if need_wsum:
                    wsum[:keep] = wsum[n:].clone()
            acc[:, keep:] = 0
            if need_wsum:
                wsum[keep:] = 0
            buf_y0 = y_end

        with torch.inference_mode():
            b0 = 0
            while b0 < len(tiles):
                bs = self._batch_for(th, tw, len(tiles))
                measure = bs is None  # auto on a GPU: the first tile alone, measuring its memory
                chunk = tiles[b0 : b0 + (1 if measure else bs)]
                b0 += len(chunk)
                batch = torch.stack([image[t.y0 : t.y1, t.x0 : t.x1] for t in chunk])
                if measure:
                    torch.cuda.synchronize(self.device)
                    torch.cuda.reset_peak_memory_stats(self.device)
                    base_bytes = torch.cuda.memory_allocated(self.device)
                t0 = time.perf_counter()
                probs = self._forward(batch, th, tw)
                model_s += time.perf_counter() - t0
                if measure:
                    self._measure_batch(th, tw, len(tiles), torch.cuda.max_memory_allocated(self.device), base_bytes)
                if acc is None:
                    acc = torch.zeros((probs.shape[1], th, w), dtype=torch.float32, device=self.device)
                    if need_wsum:
                        wsum = torch.zeros((th, w), dtype=torch.float32, device=self.device)
                    if return_probs:
                        probs_out = np.zeros((probs.shape[1], h, w), dtype=np.float32)
                for i, t in enumerate(chunk):
                    if t.y0 != buf_y0:
                        finalize(t.y0)  # rows above this tile row are complete
                    acc[:, :, t.x0 : t.x1].addcmul_(probs[i], window)
                    if need_wsum:
                        wsum[:, t.x0 : t.x1] += window
            finalize(h)
            mask = out.cpu().numpy() if self.device.type != "cpu" else out.numpy()
        info = {
            "tiles": len(tiles),
            "batch_size": self._batch_for(th, tw, len(tiles)) or 1,
            "tile_shape": [th, tw],
            "model_s": model_s,
            "predict_s": time.perf_counter() - started,
            "megapixels": h * w / 1e6,
        }
        if return_probs:
            info["probs"] = probs_out
        if shape_out is not None:
            info["shape"] = shape_out.cpu().numpy() if self.device.type != "cpu" else shape_out.numpy()
        return mask, info
