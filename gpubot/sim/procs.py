"""Processes and files of a simulated instance: find, kill, measure, and the nvidia-smi stand-in.

Every process started for an instance carries ``GPUBOT_SIM_INSTANCE=<id>`` and
``GPUBOT_REMOTE_ROOT=<root>`` in its environment; both must match, so two simulators (or two
homes) with the same instance id never touch each other's processes. Detached children
(``nohup``, ``setsid``) inherit the environment and are found the same way.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def instance_pids(instance_id: int | str, root: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose environment marks them as the instance's."""
    marker = f"GPUBOT_SIM_INSTANCE={instance_id}".encode()
    root_marker = f"GPUBOT_REMOTE_ROOT={root}".encode()
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        env = _environ(int(entry)).split(b"\0")
        if marker in env and root_marker in env and not _is_zombie(int(entry)):
            pids.append(int(entry))
    return sorted(pids)


def _is_zombie(pid: int) -> bool:
    stat = _stat_fields(pid)
    return stat is None or stat[0] in ("Z", "X")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is index 0)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def cpu_seconds(pids: list[int]) -> float:
    """Total user+system CPU seconds used so far by ``pids`` (gone ones count 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 13:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def busy_seconds(pid: int) -> float:
    """Seconds ``pid`` has wanted a CPU so far: time on a CPU plus time waiting for one.

    This is what the GPU stand-in reports as utilisation, so a busy loop reads as busy however
    loaded the simulator's own machine is (on a 2-core machine running a dozen test processes
    a busy loop gets well under half a CPU, and CPU time alone then reads it as idle). Read
    from ``/proc/PID/schedstat`` (run and run-queue wait times, ns); where the kernel has no
    schedstat, the CPU time from ``/proc/PID/stat``. A gone process counts 0.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            run_ns, wait_ns = (int(x) for x in fh.read().split()[:2])
        return (run_ns + wait_ns) / 1e9
    except (OSError, ValueError):
        return cpu_seconds([pid])


def kill_instance_processes(instance_id: int | str, root: Path, timeout_s: float = 5.0) -> int:
    """SIGKILL every process of the instance until none is left or ``timeout_s`` passes.

    Returns how many distinct pids were signalled. Processes that vanish meanwhile are fine.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        pids = instance_pids(instance_id, root)
        if not pids:
            return len(seen)
        for pid in pids:
            seen.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:  # reap our own children so they do not linger as zombies
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if time.monotonic() > deadline:
            return len(seen)
        time.sleep(0.02)


NVIDIA_SMI = r"""#!/bin/bash
# nvidia-smi stand-in of the gpubot simulator. Reads ../gpu_state (kept current by the simulator):
# line 1 utilization %, 2 memory used MiB, 3 memory total MiB, 4 name, 5 gpu count, 6 uuid prefix.
dir="$(cd "$(dirname "$0")/.." && pwd)"
mapfile -t s < "$dir/gpu_state" 2>/dev/null
util="${s[0]:-0}"; used="${s[1]:-0}"; total="${s[2]:-0}"; name="${s[3]:-GPU}"
count="${s[4]:-1}"; uuid="${s[5]:-GPU-00000000-0000-0000-0000-0000000000}"
query=""; noheader=0; nounits=0
for arg in "$@"; do
  case "$arg" in
    -L|--list-gpus)
      for ((i=0;i<count;i++)); do echo "GPU $i: $name (UUID: $uuid$i)"; done; exit 0;;
    --query-gpu=*) query="${arg#--query-gpu=}";;
    --format=*) fmt="${arg#--format=}"
      [[ ",$fmt," == *",noheader,"* ]] && noheader=1
      [[ ",$fmt," == *",nounits,"* ]] && nounits=1;;
  esac
done
if [[ -n "$query" ]]; then
  IFS=',' read -ra fields <<< "$query"
  if [[ $noheader == 0 ]]; then
    hdr=""; for f in "${fields[@]}"; do
      case "$f" in
        utilization.gpu) h="utilization.gpu [%]";; memory.used) h="memory.used [MiB]";;
        memory.total) h="memory.total [MiB]";; *) h="$f";;
      esac
      [[ $nounits == 1 ]] && h="${h% \[*}"; hdr+="${hdr:+, }$h"; done; echo "$hdr"
  fi
  for ((i=0;i<count;i++)); do
    line=""; for f in "${fields[@]}"; do
      case "$f" in
        utilization.gpu) v="$util"; [[ $nounits == 0 ]] && v="$v %";;
        memory.used) v="$used"; [[ $nounits == 0 ]] && v="$v MiB";;
        memory.total) v="$total"; [[ $nounits == 0 ]] && v="$v MiB";;
        name) v="$name";; index) v="$i";; uuid) v="$uuid$i";;
        temperature.gpu) v=$(( 35 + util / 2 ));;
        *) echo "Field \"$f\" is not a valid field to query." >&2; exit 2;;
      esac
      line+="${line:+, }$v"; done; echo "$line"
  done
  exit 0
fi
echo "+-----------------------------------------------------------------------------+"
echo "| NVIDIA-SMI 550.54.15 (gpubot simulator)   CUDA Version: 12.4               |"
echo "|-------------------------------+----------------------+----------------------+"
for ((i=0;i<count;i++)); do
  printf '| %-3s %-25s | %8sMiB / %6sMiB | %9s%%     Default |\n' \
    "$i" "$name" "$used" "$total" "$util"
done
echo "+-----------------------------------------------------------------------------+"
"""


def write_nvidia_smi(root: Path) -> None:
    """Install the nvidia-smi stand-in at ``root/.sim/bin/nvidia-smi``."""
    bin_dir = root / ".sim" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(NVIDIA_SMI)
    script.chmod(0o755)


def write_gpu_state(root: Path, *, util: float, mem_total_mb: int, name: str, count: int,
                    uuid_prefix: str) -> None:
    """Write the file nvidia-smi reads (atomically, so a reader never sees half of it).
    Nothing is written for an instance whose files are gone, also when a destroy removes
    them while this writes (the GPU sample runs outside the engine's lock)."""
    sim_dir = root / ".sim"
    if not sim_dir.is_dir():
        return
    used = int(mem_total_mb * 0.85 * util / 100.0) if util > 0 else 0
    tmp = sim_dir / "gpu_state.tmp"
    try:
        tmp.write_text(
            f"{int(round(util))}\n{used}\n{mem_total_mb}\n{name}\n{count}\n{uuid_prefix}\n"
        )
        os.replace(tmp, sim_dir / "gpu_state")
    except FileNotFoundError:
        return


def read_util_override(root: Path) -> float | None:
    """The number a process wrote to ``root/.sim/gpu_util``, clamped to 0..100, or None."""
    try:
        text = (root / ".sim" / "gpu_util").read_text().strip()
        return max(0.0, min(100.0, float(text)))
    except (OSError, ValueError):
        return None
