"""A deterministic, realistic vast.ai market: offer generation and per-query pricing.

Pure: standard library only, no I/O. :func:`generate_offers` is also meant as a test fixture
of realistic offers (vast-shaped dicts with the fields and units of vast's offer rows).

Prices follow the public market of 2025/26 (per GPU, $/h): RTX 3090 0.09-0.20, RTX 4090
0.15-0.40, A100 0.73-1.61, H100 0.90-2.30 and so on. ``dph_base`` is the on-demand compute price
of the whole machine; ``min_bid`` (the current winning interruptible bid) is below it;
``storage_cost`` is $/GB/month; ``inet_up_cost``/``inet_down_cost`` are $/GB.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

HOURS_PER_MONTH = 30 * 24
"""vast bills storage per month of 30 days."""

DEFAULT_EPOCH = 1_790_000_000.0
"""The ``now`` used by :func:`generate_offers` when none is given (keeps it pure)."""


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One GPU type of the catalogue; prices are per GPU per hour."""

    name: str
    ram_mb: int
    price_low: float
    price_high: float
    compute_cap: int
    dlperf: float
    tflops: float
    cuda_min: float
    mem_bw: float
    max_power: int
    weight: int
    gpu_counts: tuple[int, ...]
    datacenter_share: float


CATALOGUE: tuple[GpuModel, ...] = (
    GpuModel("RTX 3060", 12288, 0.04, 0.10, 860, 9.5, 12.7, 11.0, 360.0, 170, 6, (1, 2), 0.05),
    GpuModel("RTX 3090", 24576, 0.09, 0.20, 860, 22.0, 35.6, 11.0, 936.0, 350, 14, (1, 2, 4, 8),
             0.10),
    GpuModel("RTX 4090", 24564, 0.15, 0.40, 890, 45.0, 82.6, 12.0, 1008.0, 450, 16,
             (1, 2, 4, 8), 0.15),
    GpuModel("RTX A6000", 49140, 0.35, 0.60, 860, 26.0, 38.7, 11.0, 768.0, 300, 6, (1, 2, 4),
             0.45),
    GpuModel("L40S", 46068, 0.55, 0.95, 890, 58.0, 91.6, 12.0, 864.0, 350, 5, (1, 2, 4, 8), 0.7),
    GpuModel("Tesla V100", 16384, 0.12, 0.30, 700, 14.0, 15.7, 11.0, 900.0, 300, 5, (1, 2, 4, 8),
             0.5),
    GpuModel("A100 PCIE", 40960, 0.73, 1.20, 800, 65.0, 19.5, 11.0, 1555.0, 250, 5, (1, 2, 4, 8),
             0.8),
    GpuModel("A100 SXM4", 81920, 0.90, 1.61, 800, 75.0, 19.5, 11.0, 2039.0, 400, 6, (1, 2, 4, 8),
             0.9),
    GpuModel("H100 PCIE", 81559, 0.90, 2.00, 900, 95.0, 51.0, 12.0, 2000.0, 350, 3, (1, 2, 4, 8),
             0.9),
    GpuModel("H100 SXM", 81559, 1.40, 2.40, 900, 120.0, 67.0, 12.0, 3350.0, 700, 5, (1, 2, 4, 8),
             0.95),
)

LOCATIONS: tuple[str, ...] = (
    "Texas, US", "California, US", "Virginia, US", "Oregon, US", "Quebec, CA", "Ontario, CA",
    "Hesse, DE", "Bavaria, DE", "North Holland, NL", "Ile-de-France, FR", "England, GB",
    "Stockholm, SE", "Oslo, NO", "Taipei, TW", "Tokyo, JP", "Seoul, KR", "Sao Paulo, BR",
    "Warsaw, PL", "Prague, CZ", "Singapore, SG",
)

CPUS: tuple[tuple[str, int], ...] = (
    ("AMD EPYC 7B13", 64), ("AMD EPYC 7742", 128), ("Intel Xeon Gold 6338", 64),
    ("AMD Ryzen 9 7950X", 32), ("Intel Core i9-13900K", 32), ("AMD EPYC 9654", 192),
)

CUDA_VERSIONS: tuple[float, ...] = (11.8, 12.0, 12.2, 12.4, 12.6, 12.8)


def _driver_for(cuda: float) -> str:
    return {11.8: "520.61.05", 12.0: "525.125.06", 12.2: "535.183.01", 12.4: "550.54.15",
            12.6: "560.35.03", 12.8: "570.124.04"}[cuda]


def driver_int(version: str) -> int:
    """``"535.86.05"`` → ``535086005``, the int form the query language sends."""
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return parts[0] * 1_000_000 + parts[1] * 1000 + parts[2]


def generate_offers(seed: int, count: int = 300, *,
                    now: float = DEFAULT_EPOCH) -> list[dict[str, Any]]:
    """Return ``count`` vast-shaped offer dicts, the same for the same ``seed`` (and ``now``).

    Prices in the returned dicts are for ``allocated_storage`` = 5 GB and type on-demand; use
    :func:`price_offer` to price them for another query. Ids are unique ints; ``end_date`` is
    ``now`` plus the offer's remaining ``duration`` in seconds.
    """
    rng = random.Random(seed)
    weights = [g.weight for g in CATALOGUE]
    ids = sorted(rng.sample(range(1_000_000, 9_999_999), count))
    offers: list[dict[str, Any]] = []
    for offer_id in ids:
        gpu = rng.choices(CATALOGUE, weights=weights)[0]
        num_gpus = rng.choice(gpu.gpu_counts) if rng.random() < 0.4 else 1
        per_gpu = round(rng.uniform(gpu.price_low, gpu.price_high), 4)
        dph_base = round(per_gpu * num_gpus, 4)
        min_bid = round(dph_base * rng.uniform(0.35, 0.8), 4)
        datacenter = rng.random() < gpu.datacenter_share
        cuda = rng.choice([c for c in CUDA_VERSIONS if c >= gpu.cuda_min])
        reliability = round(0.999 - (rng.random() ** 2.5) * 0.199, 4)
        if datacenter:
            reliability = round(max(reliability, 0.97 + rng.random() * 0.029), 4)
        verified = rng.random() < (0.97 if datacenter else 0.85)
        cpu_name, cpu_cores = rng.choice(CPUS)
        inet_down = float(rng.choice([100, 250, 500, 800, 1000, 2000, 5000, 10000]))
        inet_up = float(round(inet_down * rng.uniform(0.3, 1.0)))
        location = rng.choice(LOCATIONS)
        duration = float(rng.randint(1, 180) * 86400 + rng.randint(0, 86399))
        machine_id = 10_000 + offer_id % 90_000
        host_id = 100 + machine_id % 9_000
        storage_cost = round(rng.uniform(0.05, 0.30), 3)
        offer: dict[str, Any] = {
            "id": offer_id,
            "ask_contract_id": offer_id,
            "bundle_id": offer_id + 100_000_000,
            "machine_id": machine_id,
            "host_id": host_id,
            "gpu_name": gpu.name,
            "num_gpus": num_gpus,
            "gpu_ram": gpu.ram_mb,
            "gpu_total_ram": gpu.ram_mb * num_gpus,
            "gpu_frac": 1.0,
            "gpu_arch": "nvidia",
            "gpu_mem_bw": gpu.mem_bw,
            "gpu_max_power": gpu.max_power,
            "gpu_max_temp": 83,
            "gpu_display_active": False,
            "gpu_lanes": 16,
            "bw_nvlink": 0.0,
            "cuda_max_good": cuda,
            "compute_cap": gpu.compute_cap,
            "driver_version": _driver_for(cuda),
            "driver_vers": driver_int(_driver_for(cuda)),
            "cpu_name": cpu_name,
            "cpu_arch": "amd64",
            "cpu_cores": cpu_cores,
            "cpu_cores_effective": float(min(cpu_cores, 8 * num_gpus * rng.choice([1, 2]))),
            "cpu_ghz": round(rng.uniform(2.2, 4.5), 1),
            "cpu_ram": 32_000 * num_gpus * rng.choice([1, 2, 4]),
            "disk_space": float(rng.choice([50, 100, 200, 500, 1000, 2000])),
            "disk_bw": float(rng.choice([500, 1500, 3000, 6000])),
            "disk_name": "nvme",
            "inet_up": inet_up,
            "inet_down": inet_down,
            "inet_up_cost": round(rng.uniform(0.0, 0.02), 4),
            "inet_down_cost": round(rng.uniform(0.0, 0.02), 4),
            "direct_port_count": rng.choice([0, 10, 20, 100]),
            "pci_gen": 4.0 if gpu.compute_cap < 890 else 5.0,
            "pcie_bw": round(rng.uniform(10.0, 26.0), 1),
            "mobo_name": rng.choice(["ROMED8-2T", "H12SSL-i", "X570", "Z790", "MZ73-LM0"]),
            "os_version": rng.choice(["20.04", "22.04", "24.04"]),
            "has_avx": 1,
            "dph_base": dph_base,
            "min_bid": min_bid,
            "storage_cost": storage_cost,
            "vram_costperhour": round(dph_base / (gpu.ram_mb * num_gpus / 1024), 6),
            "credit_discount_max": 0.4,
            "dlperf": round(gpu.dlperf * num_gpus * rng.uniform(0.85, 1.05), 2),
            "total_flops": round(gpu.tflops * num_gpus, 1),
            "reliability": reliability,
            "reliability2": reliability,
            "reliability_mult": reliability,
            "expected_reliability": reliability,
            "verification": "verified" if verified else "unverified",
            "vericode": 1 if verified else 0,
            "rentable": True,
            "rented": False,
            "is_bid": False,
            "external": False,
            "hosting_type": 1 if datacenter else 0,
            "hostname": f"host{host_id}",
            "public_ipaddr": "127.0.0.1",
            "static_ip": rng.random() < 0.7,
            "geolocation": location,
            "geolocode": LOCATIONS.index(location) + 1,
            "start_date": now - rng.randint(1, 400) * 86400.0,
            "end_date": now + duration,
            "duration": duration,
            "vms_enabled": False,
            "is_vm_deverified": False,
            "resource_type": "gpu",
            "cluster_id": None,
            "platform_fee": 0.0,
            "logo": "/static/logos/vastai_small2.png",
            "webpage": None,
        }
        offers.append(price_offer(offer, allocated_storage_gb=5.0, offer_type="on-demand",
                                  now=now))
    return offers


def price_offer(offer: dict[str, Any], *, allocated_storage_gb: float, offer_type: str,
                now: float) -> dict[str, Any]:
    """Return a copy of ``offer`` priced for a query.

    ``offer_type`` ``bid`` prices compute at ``min_bid``, anything else at ``dph_base``.
    ``storage_total_cost`` ($/h) = storage_cost × allocated GB / 720; ``dph_total`` = compute +
    storage; ``duration`` = seconds from ``now`` to ``end_date``.
    """
    row = dict(offer)
    compute = float(offer["min_bid"] if offer_type == "bid" else offer["dph_base"])
    storage_hour = float(offer["storage_cost"]) * allocated_storage_gb / HOURS_PER_MONTH
    dph_total = compute + storage_hour
    row["storage_total_cost"] = round(storage_hour, 6)
    row["dph_total"] = round(dph_total, 6)
    row["is_bid"] = offer_type == "bid"
    row["dlperf_per_dphtotal"] = round(offer["dlperf"] / dph_total, 3) if dph_total else 0.0
    row["flops_per_dphtotal"] = round(offer["total_flops"] / dph_total, 3) if dph_total else 0.0
    row["score"] = round(row["dlperf_per_dphtotal"] * offer["reliability"], 3)
    row["discounted_dph_total"] = round(dph_total * (0.6 if offer_type == "reserved" else 1.0), 6)
    row["duration"] = max(0.0, float(offer["end_date"]) - now)
    row["search"] = {
        "gpuCostPerHour": compute,
        "diskHour": row["storage_total_cost"],
        "totalHour": row["dph_total"],
        "discountTotalHour": 0.0,
        "discountedTotalPerHour": row["discounted_dph_total"],
    }
    row["instance"] = dict(row["search"])
    return row
