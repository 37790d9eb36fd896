"""The official vastai CLI, unmodified, in a subprocess against the simulator.

The CLI exits 0 even on errors, so every check reads its output.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from vastai import VastAI

from gpubot.sim.server import SimServer
from tests.fixtures.sim import run_cli


def test_cli_search_create_show_destroy(sim: SimServer, vast: VastAI, tmp_path: Path) -> None:
    found = run_cli(sim, tmp_path, "search", "offers",
                    "reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16", "-o", "dph+", "--raw")
    assert "invalid return Content-Type" not in found.stdout
    offers = json.loads(found.stdout)
    assert offers, found.stderr
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    for o in offers:
        assert o["reliability"] > 0.95 and o["cuda_max_good"] >= 12.4
        assert o["gpu_ram"] >= 16000 and o["verification"] == "verified"

    offer_id = offers[0]["id"]
    created = run_cli(sim, tmp_path, "create", "instance", str(offer_id), "--image",
                      "pytorch/pytorch", "--disk", "20", "--ssh", "--direct", "--raw")
    reply = json.loads(created.stdout)
    assert reply["success"] is True, created.stdout + created.stderr
    instance_id = reply["new_contract"]

    shown = json.loads(run_cli(sim, tmp_path, "show", "instances", "--raw").stdout)
    row = next(r for r in shown if r["id"] == instance_id)
    assert row["image_uuid"] == "pytorch/pytorch" and row["disk_space"] == 20.0
    assert row["image_runtype"] == "ssh_direc ssh_proxy"
    assert row["gpu_name"] == offers[0]["gpu_name"]

    # the rented offer left the market (checked with the SDK: each CLI start costs ~1.5 s)
    query = "reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16"
    assert offer_id not in {o["id"] for o in vast.search_offers(query, limit=1000)}

    destroyed = run_cli(sim, tmp_path, "destroy", "instance", str(instance_id), "-y")
    assert f"destroying instance {instance_id}" in destroyed.stdout, destroyed.stdout
    assert vast.show_instance(instance_id) is None
    assert offer_id in {o["id"] for o in vast.search_offers(query, limit=1000)}

    gone = run_cli(sim, tmp_path, "destroy", "instance", str(instance_id), "-y")
    assert "404" in gone.stderr or "no_such_instance" in gone.stdout + gone.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_main_prints_url_and_stops_on_ctrl_c_or_sigterm(tmp_path: Path, signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gpubot.sim.server import main; "
         "sys.exit(main(sys.argv[1:]))", "--home", str(tmp_path), "--seed", "4",
         "--api-key", "k-123", "--offers", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split()[3]
        assert url.startswith("http://127.0.0.1:")
        offers = VastAI(api_key="k-123", server_url=url).search_offers(limit=50)
        assert len(offers) <= 20 and offers
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert (tmp_path / "sim" / "state.json").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
