"""The thread policy (s3od.threads) and that every entry point goes through it (issue 24).

The CPU readings are faked: affinity through the ``affinity`` argument, cgroup v1/v2 quotas
through cgroup trees written under ``tmp_path``. No timing is asserted anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from s3od import threads as policy
from s3od.threads import (
    CpuBudget,
    ThreadChoice,
    actor_threads,
    affinity_cpus,
    cgroup_cpu_quota,
    choose_threads,
    cpu_budget,
    quiet_openmp,
)

# ----------------------------------------------------------------------------- fake cgroups


def v2_tree(tmp_path: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A unified hierarchy: /proc/self/cgroup says ``0::path``; ``limits`` maps a folder
    (relative to the root) to its ``cpu.max`` text."""
    root = tmp_path / "cgroup"
    (root / path.strip("/")).mkdir(parents=True, exist_ok=True)
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{path}\n")
    return proc, root


def v1_tree(tmp_path: Path, path: str, quota: int, period: int = 100_000,
            mount: str = "cpu,cpuacct") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    folder = root / mount / path.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"12:memory:/x\n4:cpu,cpuacct:{path}\n0::/\n")
    return proc, root


@pytest.mark.parametrize("text,expected", [
    ("max 100000", None),              # no limit
    ("100000 100000", 1.0),            # docker --cpus 1
    ("150000 100000", 1.5),
    ("50000 100000", 0.5),
])
def test_cgroup_v2_cpu_max(tmp_path, text, expected):
    proc, root = v2_tree(tmp_path, "/kubepods/pod1", {"kubepods/pod1": text})
    assert cgroup_cpu_quota(proc, root) == expected


def test_cgroup_v2_tightest_level_binds(tmp_path):
    # the pod allows 4 CPUs, its parent (the node's burstable slice) only 2
    proc, root = v2_tree(tmp_path, "/slice/pod", {"slice/pod": "400000 100000",
                                                  "slice": "200000 100000"})
    assert cgroup_cpu_quota(proc, root) == 2.0


def test_cgroup_v2_host_path_missing_in_container_reads_the_mount(tmp_path):
    # no cgroup namespace: /proc/self/cgroup names the host's path, the mount is our cgroup
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("100000 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/system.slice/docker-abc.scope\n")
    assert cgroup_cpu_quota(proc, root) == 1.0


@pytest.mark.parametrize("quota,period,expected", [
    (-1, 100_000, None),               # v1 spelling of "no quota"
    (100_000, 100_000, 1.0),
    (300_000, 100_000, 3.0),
    (50_000, 100_000, 0.5),
])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, expected):
    proc, root = v1_tree(tmp_path, "/docker/abc", quota, period)
    assert cgroup_cpu_quota(proc, root) == expected


def test_cgroup_v1_plain_cpu_mount(tmp_path):
    proc, root = v1_tree(tmp_path, "/job", 200_000, mount="cpu")
    assert cgroup_cpu_quota(proc, root) == 2.0


def test_unreadable_cgroups_mean_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "nothing") is None
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/a\n")
    (tmp_path / "cgroup" / "a").mkdir(parents=True)
    (tmp_path / "cgroup" / "a" / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_quota(proc, tmp_path / "cgroup") is None


def test_affinity_reads_the_mask():
    assert affinity_cpus(lambda pid: {0, 3, 5}) == 3
    assert affinity_cpus(lambda pid: set()) == 1  # never zero


# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("affinity,quota,workers,expected", [
    (2, None, 1, 2),       # this project's VM, idle
    (64, 1.0, 1, 1),       # a 1-CPU pod on a 64-core host: torch alone would start 64
    (64, 1.5, 1, 1),       # a part-time second thread would stall every parallel region
    (64, 2.0, 1, 2),
    (4, 8.0, 1, 4),        # the mask is tighter than the quota
    (8, None, 2, 4),       # two server processes / two actors share 8 CPUs
    (8, None, 3, 2),       # rounded down: 3 x 2 <= 8
    (2, None, 4, 1),       # never below one
    (16, 6.0, 2, 3),
])
def test_policy_threads(affinity, quota, workers, expected):
    choice = choose_threads(None, workers=workers, budget=CpuBudget(affinity, quota))
    assert choice.threads == expected
    assert choice.threads * workers <= max(workers, affinity)


def test_explicit_threads_win_over_every_reading():
    budget = CpuBudget(64, 1.0)
    assert choose_threads(6, workers=4, budget=budget) == ThreadChoice(6, "as requested")
    with pytest.raises(ValueError, match=">= 1"):
        choose_threads(0, budget=budget)
    with pytest.raises(ValueError, match="workers"):
        choose_threads(None, workers=0, budget=budget)


def test_policy_reads_fake_files_end_to_end(tmp_path):
    proc, root = v1_tree(tmp_path, "/pod", 100_000)
    budget = cpu_budget(affinity=16, proc_cgroup=proc, root=root)
    assert budget == CpuBudget(16, 1.0) and budget.cpus == 1.0
    choice = choose_threads(None, budget=budget)
    assert choice.threads == 1 and "quota 1 CPUs of 16" in choice.describe()


@pytest.mark.parametrize("cpus_per_actor,num_actors,budget,expected", [
    (1.0, 8, CpuBudget(16), 1),     # Ray's default reservation: one thread per actor
    (4.0, 8, CpuBudget(16), 4),     # 4 actors fit per node, 4 threads each: 16
    (4.0, 2, CpuBudget(2), 2),      # never above what the process may use
    (2.5, 2, CpuBudget(16), 2),
    (0.0, 4, CpuBudget(8), 2),      # no reservation: all actors may share one node
    (0.5, 16, CpuBudget(8), 1),
])
def test_ray_actor_threads_times_actors_never_exceed_the_cpus(cpus_per_actor, num_actors,
                                                               budget, expected):
    choice = actor_threads(cpus_per_actor, num_actors, budget)
    assert choice.threads == expected
    actors_per_node = (int(budget.cpus // cpus_per_actor) if cpus_per_actor >= 1
                       else num_actors)
    assert min(actors_per_node, num_actors) * choice.threads <= max(budget.cpus, num_actors)


def test_ort_session_options():
    ort = pytest.importorskip("onnxruntime")
    options = policy.ort_session_options(ort, 3)
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry(policy.ORT_SPIN_KEY) == "0"
    assert policy.ort_session_options(ort, None, spin=True).get_session_config_entry(
        policy.ORT_SPIN_KEY) == "1"


def test_quiet_openmp_only_before_torch_and_never_over_the_user():
    env: dict[str, str] = {}
    assert quiet_openmp(env, modules={}) == policy.QUIET_OPENMP_ENV
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    for name in policy.USER_OPENMP_VARS:  # the user chose how OpenMP waits
        user = {name: "ACTIVE" if name == "OMP_WAIT_POLICY" else "10000"}
        assert quiet_openmp(user, modules={}) == {} and len(user) == 1
    late: dict[str, str] = {}
    assert quiet_openmp(late, modules={"torch": object()}) == {} and late == {}


# ----------------------------------------------------------------------------- entry points


@pytest.fixture
def fake_budget(monkeypatch):
    """Pretend the process may use 2 CPUs with a 1-CPU cgroup quota."""
    monkeypatch.setattr(policy, "cpu_budget", lambda **_: CpuBudget(2, 1.0))


def test_load_remover_applies_the_policy_on_torch(tiny_lite_checkpoint, fake_budget):
    import torch

    import s3od

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        remover = s3od.load_remover(tiny_lite_checkpoint, image_size=64, device="cpu")
        assert torch.get_num_threads() == 1
        assert remover.threads.threads == 1
        assert "1 thread (cgroup quota 1 CPUs of 2)" in remover.describe()
        remover = s3od.load_remover(tiny_lite_checkpoint, image_size=64, device="cpu",
                                    threads=2)
        assert torch.get_num_threads() == 2 and remover.threads.reason == "as requested"
    finally:
        torch.set_num_threads(before)


def test_policy_never_raises_a_smaller_torch_pool(tiny_lite_checkpoint, monkeypatch):
    import torch

    import s3od

    monkeypatch.setattr(policy, "cpu_budget", lambda **_: CpuBudget(8))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the program's own choice (or OMP_NUM_THREADS=1)
        remover = s3od.load_remover(tiny_lite_checkpoint, image_size=64, device="cpu")
        assert torch.get_num_threads() == 1 and remover.threads.threads == 1
        assert "set before loading" in remover.threads.reason
    finally:
        torch.set_num_threads(before)


def test_load_remover_applies_the_policy_on_onnx_runtime(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    import s3od
    from s3od.errors import CheckpointError

    path = tmp_path / "model.onnx"
    path.write_bytes(b"not opened: the session below stops the load")
    seen: list[int] = []

    def session(model, sess_options=None, **kwargs):
        seen.append(sess_options.intra_op_num_threads)
        # idle intra-op threads sleep instead of spinning (measured in docs/speed.md)
        assert sess_options.get_session_config_entry(policy.ORT_SPIN_KEY) == "0"
        raise RuntimeError("stop here")

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(policy, "cpu_budget", lambda **_: CpuBudget(6))
    for kwargs in ({"workers": 2}, {}, {"threads": 5, "workers": 3}):
        with pytest.raises(CheckpointError):
            s3od.load_remover(path, **kwargs)
    assert seen == [3, 6, 5]


@pytest.fixture
def recorded_loads(monkeypatch):
    """Replace the one loader; record how each entry point called it."""
    import s3od.loading

    calls: list[dict] = []

    class Stub:
        backend = "torch"
        model_name = "stub"
        device = "cpu"
        image_size = 64

        def describe(self) -> str:
            return "stub"

    def load_remover(model=None, **kwargs):
        calls.append({"model": model, **kwargs})
        return Stub()

    monkeypatch.setattr(s3od.loading, "load_remover", load_remover)
    return calls


def test_cli_remove_hands_threads_to_the_loader(recorded_loads, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from s3od.cli import app
    from s3od.cli import remove as remove_cmd

    monkeypatch.setattr(remove_cmd, "run_removal", lambda plan, remover: None)
    image = next((Path(__file__).resolve().parents[1] / "assets" / "samples").glob("*.jpg"))
    runner = CliRunner()
    for extra, expected in (([], None), (["--threads", "3"], 3)):
        result = runner.invoke(app, ["remove", str(image), "-o", str(tmp_path / "x.png"),
                                     *extra])
        assert result.exit_code == 0, result.output
        assert recorded_loads[-1]["threads"] == expected


def test_server_and_demo_load_through_the_policy(recorded_loads):
    from s3od.serving.app import remover_for
    from s3od.serving.settings import ServerSettings

    remover_for(ServerSettings(model="m"))
    remover_for(ServerSettings(model="m", threads=2))
    assert [c["threads"] for c in recorded_loads] == [None, 2]
    pytest.importorskip("gradio")
    from s3od.serving import demo

    demo.build_demo(None, model_names=["stub"])  # no model given: the loader picks it
    assert len(recorded_loads) == 3 and recorded_loads[-1].get("threads") is None


def test_cli_main_quiets_openmp_before_any_command(monkeypatch):
    import s3od.cli

    called = []
    monkeypatch.setattr(policy, "quiet_openmp", lambda: called.append(True) or {})
    monkeypatch.setattr(s3od.cli, "app", lambda: called.append("app"))
    s3od.cli.main()
    assert called == [True, "app"]


def test_quiet_openmp_reaches_a_fresh_cli_process():
    """``s3od`` sets the passive wait policy before torch loads (checked in a child)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in policy.USER_OPENMP_VARS}
    code = ("import os, sys\nimport s3od.cli\nfrom s3od.threads import quiet_openmp\n"
            "sys.argv = ['s3od', '--help']\n"
            "try:\n    s3od.cli.main()\nexcept SystemExit:\n    pass\n"
            "print('WAIT', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert "WAIT PASSIVE False" in out.stdout, out.stderr[-1000:]
