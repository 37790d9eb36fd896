"""Peak memory and time of reading big command output over SSH (``ParamikoRunner.exec``).

Setup: a real OpenSSH sshd on 127.0.0.1 (the test fixture's config). Each measurement runs in
a fresh child process that connects, warms up with one small command, then runs
``head -c SIZE /dev/zero | tr '\\0' x`` (one line of SIZE bytes) and reports its peak RSS
increase (``VmHWM`` after minus before) and wall time. A second table reads the job log's
tail (``control.tail_log_script(layout, 60)``) of a 1 GiB single-line log (sparse file).

``--old-rev REV`` also runs the same with ``gpubot/remote/ssh.py`` and
``gpubot/remote/control.py`` as of git revision REV (loaded from ``git show``), for a
before/after comparison. Old code that fails or exceeds ``--child-timeout`` is reported as
such (a failure is a figure too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

MIB = 1024 * 1024

_CHILD = r"""
import importlib.util, json, sys, time
from pathlib import Path

def load(name, path, default):
    if not path:
        return default
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

def vm_hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

from gpubot.remote import control as new_control, ssh as new_ssh
from gpubot.remote.runner import SSHTarget

host, port, user, key, mode, arg, ssh_path, control_path = sys.argv[1:9]
ssh = load("bench_ssh", ssh_path, new_ssh)
control = load("bench_control", control_path, new_control)
runner = ssh.ParamikoRunner(target=SSHTarget(host, int(port), user, Path(key)))
runner.exec("echo warm")
if mode == "exec":
    command = f"head -c {int(arg)} /dev/zero | tr '\\0' x"
else:
    command = control.tail_log_script(control.remote_layout(arg, "job-big"), 60)
base = vm_hwm_kib()
started = time.monotonic()
try:
    result = runner.exec(command, timeout_seconds=600)
    kept, error = len(result.stdout), ""
except Exception as e:  # a failure is a figure too
    kept, error = 0, f"{type(e).__name__}: {str(e)[:80]}"
elapsed = time.monotonic() - started
print(json.dumps({"peak_increase_kib": vm_hwm_kib() - base, "seconds": elapsed,
                  "kept_bytes": kept, "error": error}))
"""


def run_child(server: object, mode: str, arg: str, old: dict[str, str], timeout_s: float
              ) -> dict[str, object]:
    """One measurement in a fresh process; returns its figures (or the failure)."""
    target = server.target  # type: ignore[attr-defined]
    argv = [sys.executable, "-c", _CHILD, target.host, str(target.port), target.user,
            str(target.private_key_path), mode, arg, old.get("ssh", ""), old.get("control", "")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=c.REPO,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout_s:g} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_sources(rev: str, into: Path) -> dict[str, str]:
    """``{"ssh": path, "control": path}`` of the two modules as of ``rev``."""
    paths = {}
    for name in ("ssh", "control"):
        text = subprocess.run(["git", "show", f"{rev}:gpubot/remote/{name}.py"], cwd=c.REPO,
                              capture_output=True, text=True, check=True).stdout
        path = into / f"old_{name}.py"
        path.write_text(text)
        paths[name] = str(path)
    return paths


def fmt(fig: dict[str, object]) -> list[str]:
    if fig.get("error"):
        return ["-", "-", "-", str(fig["error"])]
    return [f"{int(fig['peak_increase_kib']) / 1024:.1f}",  # type: ignore[call-overload]
            f"{float(fig['seconds']):.2f}",  # type: ignore[arg-type]
            str(fig["kept_bytes"]), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", default="1,100,1000",
                        help="output sizes in MB (10^6 bytes), comma-separated")
    parser.add_argument("--old-rev", default=None,
                        help="also measure gpubot/remote/{ssh,control}.py as of this git rev")
    parser.add_argument("--child-timeout", type=float, default=240.0,
                        help="seconds before one measurement is reported as no answer")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (sshd with PermitRootLogin, as in the tests)")
    from tests.fixtures.sshd import running_sshd

    sizes = [int(s) for s in args.sizes_mb.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp) / "sshd") as server:
        variants: list[tuple[str, dict[str, str]]] = [("after", {})]
        if args.old_rev:
            variants.insert(0, (f"before ({args.old_rev})", old_sources(args.old_rev, Path(tmp))))
        layout_root = server.root
        log = Path(layout_root) / "gpubot" / "job-big" / ".control" / "log"
        log.parent.mkdir(parents=True)
        with open(log, "wb") as fh:  # one 1 GiB line: sparse, instant
            fh.truncate(1024**3)
        rows = []
        for label, old in variants:
            for size in sizes:
                fig = run_child(server, "exec", str(size * 10**6), old, args.child_timeout)
                rows.append([label, f"exec: {size} MB line", *fmt(fig)])
            fig = run_child(server, "tail", str(layout_root), old, args.child_timeout)
            rows.append([label, "log tail, 1 GiB line", *fmt(fig)])
    print(c.machine_facts())
    print(c.table(["code", "read", "peak RSS +MiB", "seconds", "kept bytes", "error"], rows))


if __name__ == "__main__":
    main()
