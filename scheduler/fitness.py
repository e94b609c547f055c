"""Fitness formulas of the placement engine, one row of weights per mode (docs/scheduling.md).

For a task of demand (c, m) on host h, with capacity (C, M) and free (Fc, Fm) before placement:

    u_h     = ((C − Fc + c)/C + (M − Fm + m)/M) / 2           utilisation after placing, 0..1
    spread  = w_res·(1 − u_h) + w_job·1/(1 + n_jh) + w_zone·z_h
    pack    = w_res·u_h + w_img·img_h + w_net·net_h + w_zone·z_h − w_anti·n_jh/cap_j

    n_jh    tasks of the task's job already on h (job spreading / anti-affinity)
    z_h     1 if h's zone holds the fewest tasks of the job among zones, else 0 (zone balance)
    img_h   1 if h reported the task's image as cached
    net_h   1 if h has an ENI with the job's security-group set and a free IP on it (warm network)
    cap_j   the job's per-host cap (engine default 8 in pack)

Both modes then subtract `DEGRADED_PENALTY · deg_h` (term `degradedHost`), deg_h = 1 when a health
check of h is degraded (docs/health.md): 1.0 is the whole range of the other terms, so a degraded
host is chosen only when no healthy host fits (FirstFit's order: degraded last), short of soft
constraints (each −0.5) pushing healthy hosts below it.

Scores are in [-w_anti − 1, 1]; the engine adds a seeded per-host tie-break below 1e-6, so equal scores
resolve the same way whatever the host order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["DEGRADED_PENALTY", "Mode", "Weights", "WEIGHTS", "score"]

F = npt.NDArray[np.float64]
FF = TypeVar("FF", npt.NDArray[np.float64], float)  # every host's array, or one host's float


class Mode(str, Enum):
    SPREAD = "spread"
    PACK = "pack"


@dataclass(frozen=True)
class Weights:
    res: float
    job: float
    zone: float
    img: float
    net: float
    anti: float


DEGRADED_PENALTY = 1.0

WEIGHTS: dict[Mode, Weights] = {
    Mode.SPREAD: Weights(res=0.45, job=0.35, zone=0.2, img=0.0, net=0.0, anti=0.0),
    Mode.PACK: Weights(res=0.3, job=0.0, zone=0.15, img=0.35, net=0.2, anti=0.02),
}


def utilisation(free_frac: FF, inv_cpu: FF, inv_mem: FF, cpu: float, mem: float) -> FF:
    """u_h from the engine's running arrays (or one host's floats: the same operations in the same
    order give bit-identical results): free_frac = (Fc/C + Fm/M)/2, inv_* = 1/capacity."""
    u: FF = 1.0 - free_frac + (cpu * inv_cpu + mem * inv_mem) / 2.0
    return u


def score(
    mode: Mode, util: F | float, job_on_host: F | float, zone_min: F | float, img: F | float, net: F | float, cap: float,
    degraded: F | float = 0.0,
) -> dict[str, F | float]:
    """Each weighted term, by name (their sum is the score; the breakdown explains a choice)."""
    w = WEIGHTS[mode]
    health: dict[str, F | float] = {"degradedHost": -DEGRADED_PENALTY * degraded}
    if mode is Mode.SPREAD:
        return {
            "resources": w.res * (1.0 - util),
            "jobSpread": w.job / (1.0 + job_on_host),
            "zoneBalance": w.zone * zone_min,
            **health,
        }
    return {
        **health,
        "resources": w.res * util,
        "cachedImage": w.img * img,
        "warmNetwork": w.net * net,
        "zoneBalance": w.zone * zone_min,
        "jobAntiAffinity": -w.anti * job_on_host / cap,
    }
