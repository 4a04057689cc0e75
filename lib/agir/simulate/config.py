"""The simulator's settings (one dataclass) and their checks."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from agir.errors import AgirError

POOLS = ("agir", "iid")
# the baseline a strategy has to beat (issue 17: vegetation-aware random), and plain random
BASELINE = "veg_random"
# (top-k entropy is left out of the default run for time: power with T -> 0 is top-k)
DEFAULT_STRATEGIES = ("random", "veg_random", "power", "power_cap1", "class_balanced", "cost_aware")
CAP = re.compile(r"^(?P<name>.+)_cap(?P<k>[0-9]+)$")


def known_strategies() -> tuple[str, ...]:
    """Every strategy registered in agir.select.strategies (whatever the select helper has added)."""
    from agir.select import strategies as st

    return tuple(st.STRATEGIES)


def strategy_spec(name: str) -> tuple[str, dict[str, Any]]:
    """(registered strategy, select options): `<strategy>_cap<k>` is `<strategy>` with group_cap=k
    (at most k near-duplicates of one pot, `group_id`, per round)."""
    m = CAP.match(name)
    if m and m["name"] in known_strategies():
        return m["name"], {"group_cap": int(m["k"])}
    return name, {}


def available_defaults() -> tuple[str, ...]:
    have = set(known_strategies())
    return tuple(s for s in DEFAULT_STRATEGIES if strategy_spec(s)[0] in have)


@dataclasses.dataclass
class SimConfig:
    """Every knob of one simulation; defaults are the full benchmark's choices (docs/active_learning.md)."""

    pool: str = "agir"  # agir: species pot sequences (agir.demo.sequences); iid: the old binary demo pool
    # --- agir pool
    groups: int = 60  # pots, each imaged on `days` days (pool = groups x days images)
    days: int = 6
    size: int = 128  # frame side in px
    test_per_species: int = 6  # fixed test set: frames per species (8 species)
    val_per_species: int = 4  # validation set (the one settings are tuned on), same construction
    # --- iid pool (the earlier benchmark's data)
    pool_size: int = 200
    test: int = 40
    width: int = 256
    height: int = 192
    # --- loop
    initial: int = 8
    rounds: int = 4
    per_round: int = 16
    strategies: tuple[str, ...] = ()  # empty: every default that agir.select.strategies has
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    data_seed: int = 0
    # --- model (demo's small CPU network, fine-tuned round after round)
    arch: str = "Linknet"
    encoder: str = "timm-mobilenetv3_small_minimal_100"
    crop_size: int = 128
    batch_size: int = 8
    lr: float = 0.003  # round 0, from random weights
    ft_lr: float = 0.003  # later rounds, fine-tuning the previous round's model
    init_steps: int = 300
    ft_steps: int = 150
    full_steps: int = 600  # the full-pool reference's fine-tuning steps (0: rounds x ft_steps, the last model's)
    weight_cap: float = 20.0  # class weights (inverse pixel frequency) spread at most this much
    repeat_thresh: float = 0.3  # repeat-factor sampling of frames with rare classes (0: uniform draws)
    # --- "review here" hints (§5)
    hint_threshold: float = 0.2
    hint_regions: int = 5
    threads: int = 1
    jobs: int = 2  # seeds run in parallel processes
    data_dir: str | None = None  # iid pool: reuse a generated demo database (else {out}/data)

    def resolved(self) -> SimConfig:
        return self if self.strategies else dataclasses.replace(self, strategies=available_defaults())

    def check(self) -> None:
        if self.pool not in POOLS:
            raise AgirError(f"simulate --pool={self.pool!r}: use one of {', '.join(POOLS)}")
        have = known_strategies()
        unknown = [s for s in self.strategies if strategy_spec(s)[0] not in have]
        if unknown:
            raise AgirError(f"simulate --strategies: unknown {unknown}; choose from {', '.join(have)} "
                            "(<strategy>_cap<k>: at most k frames of one group per round)")
        if not self.seeds:
            raise AgirError("simulate: need at least one seed")
        for name in ("groups", "days", "size", "test_per_species", "pool_size", "test", "initial", "per_round",
                     "init_steps", "batch_size", "crop_size"):
            if int(getattr(self, name)) < 1:
                raise AgirError(f"simulate --{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if self.rounds < 0 or self.ft_steps < 0:
            raise AgirError("simulate --rounds and --ft-steps must be >= 0")
        n = self.pool_images()
        if self.initial + self.rounds * self.per_round > n:
            raise AgirError(
                f"simulate: initial {self.initial} + rounds {self.rounds} x per-round {self.per_round} exceeds the "
                f"pool of {n} images; enlarge the pool (--groups/--days or --pool-size) or select fewer"
            )

    def pool_images(self) -> int:
        return self.groups * self.days if self.pool == "agir" else self.pool_size

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
