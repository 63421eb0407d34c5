"""docs/scaling.md, SLURM: the Hydra submitit launcher against a real single-node SLURM.

The test starts Debian's `slurm-wlm` daemons on this machine from a configuration in a temporary
folder (munged with its own key and socket, slurmctld and slurmd on 127.0.0.1 and free ports; no
file under /etc is read or written), runs that page's recipe shape (`-m
hydra/launcher=submitit_slurm ... compress=dst,safecompress`) on the smoke experiment, checks that
SLURM ran one job per combination and that each logged its MLflow run, and stops the daemons by
their PIDs. Needs root (slurmd launches jobs) and `apt-get install slurm-wlm`; skipped otherwise.

Slow (excluded by default): `python -m pytest -m slow tests/slow/test_slurm.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, procs: dict[str, subprocess.Popen], folder: Path):
    deadline = time.monotonic() + timeout
    while not check():
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {f.name}:\n{f.read_text(errors='replace')[-1500:]}"
                for f in sorted(folder.glob("*.log"))
            )
            pytest.fail(f"{what}: not ready (exited: {dead}):\n{logs}")
        time.sleep(0.3)


@contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """munged + slurmctld + slurmd in the foreground (their PIDs are ours); yields the environment
    that points SLURM's commands at this cluster."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(
            f"SLURM not installed ({', '.join(missing)} missing): apt-get install slurm-wlm"
        )
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to launch jobs")
    host = socket.gethostname().split(".")[0]
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    sock = folder / "munge.socket"
    conf = folder / "slurm.conf"
    for d in ("ctld", "d"):
        (folder / d).mkdir()
    conf.write_text(
        "\n".join(
            [
                "ClusterName=safecompress",
                f"SlurmctldHost={host}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                "SlurmUser=root",
                f"StateSaveLocation={folder / 'ctld'}",
                f"SlurmdSpoolDir={folder / 'd'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                "ProctrackType=proctrack/linuxproc",  # no cgroups needed
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "ReturnToService=2",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, *cmd: str) -> None:
        with open(folder / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder
            )

    try:
        start(
            "munged", "munged", "-F", "-f", f"--socket={sock}", f"--key-file={key}",
            f"--log-file={folder / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
            f"--seed-file={folder / 'munged.seed'}",
        )  # fmt: skip
        wait_for(sock.exists, 30, "munged", procs, folder)
        start("slurmctld", "slurmctld", "-D", "-f", str(conf))
        start("slurmd", "slurmd", "-D", "-f", str(conf), "-N", host)

        def node_idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            )
            return out.stdout.strip() == "idle"

        wait_for(node_idle, 60, "slurm node", procs, folder)
        yield env

        # The launcher returns once the jobs wrote their results; their job steps end just after.
        # Stopping the daemons before that would leave slurmstepd processes behind.
        def queue_empty() -> bool:
            out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and not out.stdout.strip()

        wait_for(queue_empty, 120, "jobs to leave the queue", procs, folder)
    finally:
        if all(p.poll() is None for p in procs.values()) and len(procs) == 3:
            jobs = subprocess.run(
                ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True
            )
            if (
                jobs.stdout.split()
            ):  # the test failed with jobs still queued: cancel them (ours only)
                subprocess.run(["scancel", *jobs.stdout.split()], env=env)
                time.sleep(5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def test_readme_slurm_recipe_runs_on_a_single_node_cluster(tmp_path):
    root = tmp_path / "root"
    with slurm_cluster(tmp_path / "slurm") as env:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable, "-m", "pipeline", "-m", "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=20",
            "hydra.launcher.cpus_per_task=1", "runtime.device=cpu",
            "experiment=smoke", "stage=attack", f"paths.root={root}",
            "compress=dst,safecompress", "seed=0",
        ]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        slurmd_log = (tmp_path / "slurm" / "slurmd.log").read_text(errors="replace")
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert slurmd_log.count("Launching batch job") == 2, slurmd_log[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("safecompress")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'attack'")
    assert sorted(r.data.tags["method"] for r in runs) == ["dst", "safecompress"]
    assert all(r.info.status == "FINISHED" and "audit_auc" in r.data.metrics for r in runs)
