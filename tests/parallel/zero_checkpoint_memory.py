"""ZeRO-1 with pipeline stages holds only its own shard of the Adam moments, also while it
writes a checkpoint: the moments of tensors several stages hold (a tied embedding, the shared
block) are made equal across stages owner to owner (replica_sync_shards), never by gathering a
stage's whole moments. A pp 2 x dp 2 job on the emulated device, whose allocations are counted
exactly ("device memory: at most X MiB allocated at once" in train.log), checkpoints every step;
its peak must be below the same job's without ZeRO (which holds the whole moments throughout) by
at least an eighth of the embedding's moments: ZeRO-1 at dp 2 holds half the moments but adds a
gradient shard of half the parameters, a net saving of a quarter of the moments; gathering them
whole at a checkpoint put ZeRO's peak above the job without it.

usage: zero_checkpoint_memory.py LOOM_BINARY SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import prepare_data, sets  # noqa: E402

LOOM, SRC = sys.argv[1], sys.argv[2]
VOCAB, D_MODEL = 20000, 128
CONFIG = f"""
model {{ vocab_size: {VOCAB} d_model: {D_MODEL} n_heads: 4 d_mlp: 256 max_seq_len: 32
        prelude_layers: 1 block_layers: 1 loops: 2 coda_layers: 1 }}
train {{ global_batch: 4 micro_batch: 1 seq_len: 32 steps: 3 eval_interval: 0 }}
data {{ train_shards: "data/train_*.bin" val_shards: "" }}
checkpoint {{ interval: 1 keep_last: 1 }}
logging {{ interval: 1000 sample_tokens: 0 }}
runtime {{ threads: 1 device: EMULATED }}
parallel {{ dp: 2 pp: 2 }}
"""


def peak_mib(run_dir, zero_stage):
    cmd = [LOOM, "train", "zero.textproto", "--run-dir", run_dir,
           *sets([f"parallel.zero_stage={zero_stage}"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600,
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    found = re.search(r"device memory: at most ([0-9.]+) MiB", proc.stdout)
    if proc.returncode != 0 or not found:
        sys.exit(f"FAIL: zero_stage {zero_stage}: exit {proc.returncode}:\n"
                 f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return float(found.group(1))


def main():
    os.chdir(tempfile.mkdtemp(prefix="loom-zero-memory-"))
    prepare_data(LOOM, SRC)
    with open("zero.textproto", "w") as f:
        f.write(CONFIG)
    moments_mib = 2 * 4 * VOCAB * D_MODEL / 2**20  # the tied embedding's m and v, fp32
    whole = peak_mib("whole", 0)
    sharded = peak_mib("sharded", 1)
    print(f"device memory peak of the largest rank: {whole:.2f} MiB without ZeRO, {sharded:.2f} "
          f"MiB with ZeRO-1 checkpointing every step (the embedding's moments: "
          f"{moments_mib:.2f} MiB)")
    if whole - sharded < moments_mib / 8:
        sys.exit(f"FAIL: ZeRO-1 saves {whole - sharded:.2f} MiB, less than an eighth of the "
                 f"moments ({moments_mib / 8:.2f} MiB): a rank held whole moments")
    print("ok: ZeRO-1 with pp 2 never held a stage's whole moments")


main()
