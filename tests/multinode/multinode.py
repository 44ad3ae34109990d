#!/usr/bin/env python3
"""Multi-node tests on a cluster of network namespaces (cluster/netns/cluster.sh): two nodes of
two slots each, joined through a bridge, sshd on each node, and for `slurm` a two-node Slurm.
Each case builds its own cluster and tears it down; without root or the packages it skips
(exit 77) and says why.

  equivalence  loom train --hostfile with dp 2 x tp 2 (tp inside each node, dp across), and
               pp 2 x tp 2 and sp 2 x tp 2 (stages, the ring across) equal the single-process
               losses within 1e-5; every rank reports its node; a tp group
               across nodes is refused, by loom train before start (--hosts a:3,b:1) and by the
               ranks under mpirun --map-by node; ranks that see another data set or another
               run directory (a node-local folder) are refused, naming the ranks and nodes
  slurm        the same layout through `sbatch -N 2 --ntasks-per-node=2 cluster/slurm/train.sbatch`
  faults       a rank on node 2 killed, then node 2's link brought down: the job ends within
               parallel.collective_timeout_s + a few seconds, naming the rank or node, and no
               process of the job is left on either node

usage: multinode.py CASE LOOM_BINARY SOURCE_DIR
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
from equivalence_common import (compare, failures, finish, metrics,  # noqa: E402
                                prepare_data, training_config)

CASE, LOOM, SRC = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
CLUSTER = os.path.join(SRC, "cluster", "netns", "cluster.sh")
SKIP = 77

MODEL = ("model { vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32 "
         "prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 input_injection: true "
         "residual: LADDER tie_embeddings: false }")
LAYOUT = ["--set", "parallel.dp=2", "--set", "parallel.tp=2"]
OTHER_LAYOUTS = {"pp 2 x tp 2": ["parallel.pp=2", "parallel.tp=2"],
                 "sp 2 x tp 2": ["parallel.sp=2", "parallel.tp=2"]}
FAULT_TIMEOUT_S = 10  # parallel.collective_timeout_s of the fault runs
GRACE_S = 10          # what "a few seconds" after the timeout may take at most


def cluster(*args, check=True):
    return subprocess.run(["bash", CLUSTER, *args], capture_output=True, text=True, check=check)


def on_cluster(cluster_dir, cmd, **kwargs):
    """cmd on the login node (the root namespace) with the cluster's Open MPI and Slurm
    settings (DIR/env.sh)."""
    script = f'. "{cluster_dir}/env.sh" && exec "$@"'
    return subprocess.run(["bash", "-c", script, "_", *cmd], capture_output=True, text=True,
                          errors="replace", **kwargs)


def popen_on_cluster(cluster_dir, cmd):
    script = f'. "{cluster_dir}/env.sh" && exec "$@"'
    return subprocess.Popen(["bash", "-c", script, "_", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)


def expect(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAIL'}: {name}")
    if not ok:
        failures.append(f"{name}{': ' + detail if detail else ''}")


def expect_refused(name, proc, *needles):
    out = proc.stdout + proc.stderr
    expect(name, proc.returncode != 0 and all(n in out for n in needles),
           f"exit {proc.returncode}, wanted {needles} in:\n{out[-3000:]}")


def write_config(name, extra=""):
    with open(f"{name}.textproto", "w") as f:
        f.write(MODEL + training_config(global_batch=8, eval_batches=2) + extra)
    return f"{name}.textproto"


def reference(config):
    proc = subprocess.run([LOOM, "train", config, "--run-dir", "ref"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        failures.append(f"single-process reference failed:\n{proc.stderr[-3000:]}")
        return None
    return metrics("ref")


def case_equivalence(cluster_dir):
    config = write_config("eq")
    ref = reference(config)
    hostfile = os.path.join(cluster_dir, "hostfile")
    proc = on_cluster(cluster_dir, [LOOM, "train", config, *LAYOUT, "--hostfile", hostfile,
                                    "--run-dir", "hostfile-run"], timeout=300)
    if proc.returncode != 0:
        failures.append(f"--hostfile run: exit {proc.returncode}\n{proc.stdout[-2000:]}"
                        f"{proc.stderr[-3000:]}")
    elif ref is not None:
        compare("dp 2 x tp 2 on 2 nodes (--hostfile) against one process", ref,
                metrics("hostfile-run"))
        with open("hostfile-run/train.log") as f:
            log = f.read()
        expect("rank 0 runs on node1 and the log says so", "rank 0 on node1" in log, log[:800])
        expect("loom train prints the placement",
               re.search(r"placement \S+: ranks 0-1; \S+: ranks 2-3", proc.stderr) is not None,
               proc.stderr[-1500:])
    # The other axes across the nodes, tp inside them: pipeline stages, and the sequence ring.
    for name, layout in OTHER_LAYOUTS.items():
        run_dir = f"hostfile-{name.replace(' ', '')}"
        sets = [a for o in layout for a in ("--set", o)]
        proc = on_cluster(cluster_dir, [LOOM, "train", config, *sets, "--hostfile", hostfile,
                                        "--run-dir", run_dir], timeout=300)
        if proc.returncode != 0:
            failures.append(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        elif ref is not None:
            compare(f"{name} on 2 nodes (--hostfile) against one process", ref, metrics(run_dir))

    # tp across nodes: refused before anything starts ...
    a, b = [line.split()[0] for line in open(hostfile) if line.strip()][:2]
    proc = on_cluster(cluster_dir, [LOOM, "train", config, *LAYOUT, "--hosts", f"{a}:3,{b}:1",
                                    "--run-dir", "cross-tp"], timeout=120)
    expect_refused("a tp group across nodes is refused before start", proc,
                   "tensor-parallel group {2,3} would span nodes", "--allow-cross-node-tp")
    expect("... and nothing was started", not os.path.exists("cross-tp"))
    # ... and by the ranks when mpirun, started by hand, places them round-robin.
    mpirun = ["mpirun", "-np", "4", "--allow-run-as-root", "--hostfile", hostfile, "--map-by",
              "node", "--bind-to", "none"]
    proc = on_cluster(cluster_dir, mpirun + [LOOM, "train", config, *LAYOUT, "--run-dir",
                                             "cross-tp-by-hand"], timeout=120)
    expect_refused("ranks placed round-robin by hand refuse tp across nodes", proc,
                   "would span nodes node1, node2")

    # A data set that differs on node 2 (a stale copy with one shard more), and a run directory
    # only node 1 sees (DIR/local is a node-private folder on each node).
    local = os.path.join(cluster_dir, "local")
    for node in (1, 2):
        shutil.copytree("data", os.path.join(cluster_dir, f"node{node}.local", "data"))
    node2_data = os.path.join(cluster_dir, "node2.local", "data")
    shutil.copy(os.path.join(node2_data, "train_000000.bin"),
                os.path.join(node2_data, "train_000001.bin"))
    with open(config) as f:
        text = f.read().replace('"data/', f'"{local}/data/')
    with open("node-local-data.textproto", "w") as f:
        f.write(text)
    proc = on_cluster(cluster_dir, [LOOM, "train", "node-local-data.textproto", *LAYOUT,
                                    "--hostfile", hostfile, "--run-dir", "other-data"],
                      timeout=120)
    expect_refused("ranks that see another data set are refused", proc,
                   "ranks 2 (node2), 3 (node2) see another data set for data.train_shards")
    proc = on_cluster(cluster_dir, [LOOM, "train", config, *LAYOUT, "--hostfile", hostfile,
                                    "--run-dir", os.path.join(local, "run")], timeout=120)
    expect_refused("a run directory only rank 0's node sees is refused", proc,
                   "cannot see the run directory", "ranks 2 (node2), 3 (node2)")


def case_slurm(cluster_dir):
    config = write_config("slurm")
    ref = reference(config)
    env = dict(os.environ, LOOM=LOOM)
    script = f'. "{cluster_dir}/env.sh" && exec "$@"'
    proc = subprocess.run(
        ["bash", "-c", script, "_", "sbatch", "--parsable", "--wait", "-N", "2",
         "--ntasks-per-node=2", "--cpus-per-task=1", f"--chdir={os.getcwd()}",
         f"--output={os.getcwd()}/slurm-%j.out", os.path.join(SRC, "cluster", "slurm",
                                                             "train.sbatch"),
         config, *LAYOUT], capture_output=True, text=True, env=env, timeout=300)
    job = proc.stdout.strip().split(";")[0]
    out_path = f"slurm-{job}.out"
    output = open(out_path).read() if job and os.path.exists(out_path) else ""
    if proc.returncode != 0 or not job:
        failures.append(f"sbatch: exit {proc.returncode}\n{proc.stderr[-2000:]}\n{output[-3000:]}")
        return
    expect("loom started the ranks with srun, tasks per node from the allocation",
           "--ntasks-per-node=2" in output and "srun" in output, output[-2000:])
    run_dir = f"runs/slurm-{job}"
    if ref is not None and os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        compare("dp 2 x tp 2 on 2 Slurm nodes (sbatch -N 2) against one process", ref,
                metrics(run_dir))
        with open(os.path.join(run_dir, "train.log")) as f:
            expect("rank 0 ran on node1", "rank 0 on node1" in f.read())
    else:
        failures.append(f"the Slurm run wrote no metrics:\n{output[-3000:]}")


def rank_pid(cluster_dir, node, rank):
    """The pid of loom's global rank `rank` among node `node`'s processes, or None."""
    for pid in cluster("pids", cluster_dir, str(node)).stdout.split():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "loom" and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


def wait_for_steps(run_dir, proc, steps, limit_s=120):
    deadline = time.time() + limit_s
    while time.time() < deadline and proc.poll() is None:
        path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(path) and len(open(path).read().splitlines()) >= steps:
            return True
        time.sleep(0.2)
    return False


def leftovers(cluster_dir, wait_s=5):
    """Processes of the job still alive on either node (after waiting up to wait_s)."""
    deadline = time.time() + wait_s
    while True:
        left = {n: cluster("pids", cluster_dir, str(n)).stdout.split() for n in (1, 2)}
        if not any(left.values()) or time.time() > deadline:
            return {n: p for n, p in left.items() if p}
        time.sleep(0.2)


def fault_run(cluster_dir, name, config, inject):
    """Starts a long run, waits for its second step, calls inject(); returns (seconds from the
    injection to the job's end, exit status, output)."""
    proc = popen_on_cluster(cluster_dir, [LOOM, "train", config, *LAYOUT, "--hostfile",
                                          os.path.join(cluster_dir, "hostfile"),
                                          "--run-dir", name])
    if not wait_for_steps(name, proc, 2):
        proc.kill()
        failures.append(f"{name}: the run did not reach step 2:\n{proc.communicate()[0][-3000:]}")
        return None
    start = time.time()
    inject()
    try:
        out, _ = proc.communicate(timeout=FAULT_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        failures.append(f"{name}: the job was still running {FAULT_TIMEOUT_S + 60} s later")
        return None
    return time.time() - start, proc.returncode, out


def case_faults(cluster_dir):
    config = write_config("faults", f"parallel {{ collective_timeout_s: {FAULT_TIMEOUT_S} }}\n")
    with open(config) as f:
        text = f.read().replace("steps: 6", "steps: 100000").replace("interval: 3", "interval: 0")
    with open(config, "w") as f:
        f.write(text)
    limit = FAULT_TIMEOUT_S + GRACE_S

    def kill_rank_3():
        pid = rank_pid(cluster_dir, 2, 3)
        expect("rank 3 runs on node 2", pid is not None)
        if pid:
            os.kill(pid, signal.SIGKILL)

    result = fault_run(cluster_dir, "killed-rank", config, kill_rank_3)
    if result:
        seconds, code, out = result
        print(f"killed rank 3 on node 2: the job ended after {seconds:.1f} s, exit {code}")
        expect(f"a killed rank ends the job within {limit} s", code != 0 and seconds <= limit,
               f"{seconds:.1f} s, exit {code}")
        expect("the message names rank 3 and its node",
               re.search(r"rank 3 .*(node2|10\.77\.0\.3)", out) is not None, out[-3000:])
        left = leftovers(cluster_dir)
        expect("no process is left on either node", not left, str(left))

    result = fault_run(cluster_dir, "link-down", config,
                       lambda: cluster("link", cluster_dir, "2", "down"))
    if result:
        seconds, code, out = result
        print(f"node 2's link down: the job ended after {seconds:.1f} s, exit {code}")
        expect(f"a node whose link goes down ends the job within {limit} s",
               code != 0 and seconds <= limit, f"{seconds:.1f} s, exit {code}")
        expect("the message names node 2", re.search(r"node2|10\.77\.0\.3", out) is not None,
               out[-3000:])
        left = leftovers(cluster_dir, wait_s=8)
        expect("no process is left on either node, the cut-off one included", not left, str(left))
    cluster("link", cluster_dir, "2", "up", check=False)


def main():
    slurm = CASE == "slurm"
    check = cluster("check", *(["--slurm"] if slurm else []), check=False)
    if check.returncode != 0:
        print(f"skipped: {(check.stdout + check.stderr).strip()}")
        raise SystemExit(SKIP)
    work = tempfile.mkdtemp(prefix=f"loom-multinode-{CASE}-")
    cluster_dir = os.path.join(work, "cluster")
    os.chdir(work)
    try:
        up = cluster("up", cluster_dir, "--nodes", "2", "--slots", "2",
                     *(["--slurm"] if slurm else []), check=False)
        if up.returncode != 0:
            failures.append(f"cluster.sh up failed:\n{up.stdout}{up.stderr}")
            finish()
        prepare_data(LOOM, SRC)
        {"equivalence": case_equivalence, "slurm": case_slurm, "faults": case_faults}[CASE](
            cluster_dir)
    finally:
        cluster("down", cluster_dir, check=False)
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
