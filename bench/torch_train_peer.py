#!/usr/bin/python3
"""Train the PyTorch peer GPT the way `attnlab train` trained a run, for a loss comparison.

  /usr/bin/python3 bench/torch_train_peer.py RUN_DIR [--threads N] [--max-steps N]

RUN_DIR is a directory `attnlab train` made (runs/<name>): the script reads its resolved
recipe.ini and token shards (tokens.train.bin, tokens.val.bin) and trains the peer model
(../shared/peers/torch_gpt.py, --peers DIR) with
  - the same batches: batch k's window starts are BatchSampler's (data/batch_sampler.cpp):
    Philox-4x32-10 (lib/rng.h) under key run.seed at counters [k * ceil(B/4), (k+1) * ceil(B/4)),
    start = (word * (N - T)) >> 32, reimplemented in numpy and checked against our C++
    (`dump_logits --starts`) before training,
  - the same optimizer: AdamW with optim.lr/beta1/beta2/eps/weight_decay, no decay on biases,
    norms, wte and wpe (unless optim.decay_all), linear warmup + cosine to optim.min_lr
    (optim/schedule.cpp), gradient clipping to optim.grad_clip (scale by clip / norm when the
    norm is above it), non-finite steps skipped,
  - the same validation: the first train.eval_batches batches of consecutive windows of the
    validation stream (sequential_batches), at every train.eval_every steps and the last,
  - the same log steps (1, every train.log_every, eval steps) with train_loss averaged over the
    steps since the previous log line, as metrics.jsonl has it.
Only the initialisation differs (torch's RNG; --init-seed), so losses agree within noise.
--resume-from CHECKPOINT instead starts from one of our checkpoints (weights, AdamW state and
step): then the peer should follow our run to float rounding, an exact check of the above.

Output: one line per log step `step N train_loss X [val_loss Y] lr .. grad_norm .. ms_per_step ..`,
then `RESULT val_loss=... steps=...`; when RUN_DIR has metrics.jsonl, a table of ours vs the
peer's at each logged step (COMPARE lines).

Runs under OpenBLAS (OpenMP build) when libopenblas0-openmp is installed, like
../shared/peers/run_torch.sh (it re-executes itself with that libblas first on
LD_LIBRARY_PATH and OMP_NUM_THREADS = --threads); --blas default keeps whatever libblas.so.3 is.
"""
import argparse
import configparser
import glob
import json
import math
import os
import struct
import subprocess
import sys
import time

import numpy as np

DEFAULT_PEERS = "/work/shared/peers"
REEXEC_ENV = "ATTNLAB_TORCH_PEER_BLAS"


class Refused(Exception):
    """A run the peer cannot reproduce, or a usage error (exit code 2)."""


# ---- Philox-4x32-10 and the batch sampler (lib/rng.h, data/batch_sampler.cpp) -----------------

M32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter_lo, key):
    """Philox blocks for counters (counter_lo[i], counter_hi = 0) under a 64-bit key -> uint64 [n, 4]."""
    lo = np.asarray(counter_lo, dtype=np.uint64)
    c0, c1 = lo & M32, lo >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64((key >> 32) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = np.uint64(0xD2511F53) * c0
            p1 = np.uint64(0xCD9E8D57) * c2
            hi0, lo0 = p0 >> np.uint64(32), p0 & M32
            hi1, lo1 = p1 >> np.uint64(32), p1 & M32
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = (k0 + np.uint64(0x9E3779B9)) & M32
            k1 = (k1 + np.uint64(0xBB67AE85)) & M32
    return np.stack([c0, c1, c2, c3], axis=-1)


def batch_starts(steps, batch, seq_len, num_tokens, seed):
    """Window starts of BatchSampler batches `steps` (array of k) -> int64 [len(steps), batch]."""
    steps = np.asarray(steps, dtype=np.uint64)
    blocks = (batch + 3) // 4
    counters = steps[:, None] * np.uint64(blocks) + np.arange(blocks, dtype=np.uint64)[None, :]
    words = philox4x32_10(counters.reshape(-1), seed).reshape(len(steps), blocks * 4)[:, :batch]
    high = np.uint64(num_tokens - seq_len)  # starts uniform in [0, N - T - 1]
    return ((words * high) >> np.uint64(32)).astype(np.int64)


def verify_starts(dump, num_tokens, batch, seq_len, seed, steps):
    """Compares batch_starts with `dump_logits --starts` at a few steps; raises on a mismatch."""
    checks = sorted({0, 1, 2, 3, max(steps // 2, 0), max(steps - 2, 0), max(steps - 1, 0)})
    for first in checks:
        cmd = [dump, "--starts", str(num_tokens), str(batch), str(seq_len), str(seed), str(first), "1"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise Refused(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
        theirs = [int(v) for v in r.stdout.split(":", 1)[1].split()]
        ours = batch_starts([first], batch, seq_len, num_tokens, seed)[0].tolist()
        if ours != theirs:
            raise Refused(f"numpy Philox starts differ from BatchSampler's at batch {first}: {ours} vs {theirs}")
    return checks


# ---- run files ------------------------------------------------------------------------------

def read_token_shard(path):
    """data/shard.h: 32-byte header ("ALTOKENS", u32 version 1, u32 width, u64 vocab, u64 count)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 32 or data[:8] != b"ALTOKENS":
        raise Refused(f"{path}: not an attnlab token shard")
    version, width, vocab, count = struct.unpack("<IIQQ", data[8:32])
    if version != 1 or width not in (2, 4) or len(data) != 32 + count * width:
        raise Refused(f"{path}: unsupported or damaged shard (version {version}, width {width}, {count} tokens, "
                      f"{len(data) - 32} payload bytes)")
    tokens = np.frombuffer(data, dtype="<u2" if width == 2 else "<i4", offset=32, count=count).astype(np.int64)
    return tokens, vocab


class Recipe:
    """The resolved recipe.ini a run directory holds, with the trainer's defaults."""

    def __init__(self, path):
        self.path = path
        self.cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
        self.cp.optionxform = str
        if not self.cp.read(path):
            raise Refused(f"cannot read {path}")

    def get(self, key, default):
        section, name = key.split(".", 1)
        if not self.cp.has_option(section, name):
            return default
        raw = self.cp.get(section, name).strip()
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise Refused(f"{self.path}: {key} = {raw} is not a boolean")
            return raw.lower() in ("true", "1", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw


def train_config(run_dir):
    r = Recipe(os.path.join(run_dir, "recipe.ini"))
    c = dict(seed=r.get("run.seed", 1),
             batch=r.get("train.batch", 8), seq_len=r.get("train.seq_len", 128), steps=r.get("train.steps", 100),
             log_every=r.get("train.log_every", 10), eval_every=r.get("train.eval_every", 100),
             eval_batches=r.get("train.eval_batches", 20), max_bad_steps=r.get("train.max_bad_steps", 5),
             optimizer=r.get("optim.name", "adamw"), lr=r.get("optim.lr", 1e-3))
    c.update(min_lr=r.get("optim.min_lr", c["lr"] * 0.1), warmup=r.get("optim.warmup", 0),
             weight_decay=r.get("optim.weight_decay", 0.1), decay_all=r.get("optim.decay_all", False),
             beta1=r.get("optim.beta1", 0.9), beta2=r.get("optim.beta2", 0.95), eps=r.get("optim.eps", 1e-8),
             grad_clip=r.get("optim.grad_clip", 1.0))
    model = dict(vocab_pad=r.get("model.vocab_pad", 1), context=r.get("model.context", c["seq_len"]),
                 layers=r.get("model.layers", 4), d_model=r.get("model.d_model", 256), heads=r.get("model.heads", 4),
                 mlp_hidden=r.get("model.mlp_hidden", 0), norm=r.get("model.norm", "layernorm"),
                 mlp=r.get("model.mlp", "gelu"), positions=r.get("model.positions", "learned"),
                 attention=r.get("model.attention", "softmax"), bias=r.get("model.bias", True),
                 tie_embeddings=r.get("model.tie_embeddings", True), dropout=r.get("model.dropout", 0.0))
    return c, model


def lr_at(step, c):
    """optim/schedule.cpp WarmupCosine (step from 0)."""
    peak, min_lr, warmup, total = c["lr"], c["min_lr"], c["warmup"], c["steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


def is_no_decay_parameter(name):
    """layers/gpt.cpp is_no_decay_parameter."""
    return (name.endswith(".bias") or "ln_" in name or "norm" in name or name.endswith("wte.weight")
            or name.endswith("wpe.weight"))


def read_metrics(path):
    rows = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    m = json.loads(line)
                    rows[int(m["step"])] = m
                except (ValueError, KeyError):
                    pass
    return rows


# ---- main -------------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory made by `attnlab train` (recipe.ini, tokens.*.bin)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default nproc)")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"folder of torch_gpt.py (default {DEFAULT_PEERS})")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this step (the schedule still spans train.steps); 0 = train.steps")
    p.add_argument("--init-seed", type=int, default=None, help="torch.manual_seed for the peer's init (default run.seed)")
    p.add_argument("--resume-from", default="",
                   help="start from our checkpoint (run dir / *.model.safetensors): weights, AdamW state, step")
    p.add_argument("--dump-logits", default="", help="dump_logits binary for the batch check (default: found in "
                                                      "$ATTNLAB_BUILD_DIR, build/, build-peer/)")
    p.add_argument("--no-verify-batches", action="store_true", help="skip the check against our C++ sampler")
    p.add_argument("--blas", choices=["openblas", "default"], default="openblas",
                   help="openblas: re-exec with Debian's OpenMP OpenBLAS when installed (as run_torch.sh)")
    return p.parse_args()


def maybe_reexec_with_openblas(a):
    if a.blas != "openblas" or os.environ.get(REEXEC_ENV):
        return os.environ.get(REEXEC_ENV, "default libblas.so.3")
    libs = sorted(glob.glob("/usr/lib/*/openblas-openmp/libblas.so.3"))
    if not libs:
        print("note: libopenblas0-openmp is not installed; torch uses the default libblas.so.3 (slow)", flush=True)
        return "default libblas.so.3"
    d = os.path.dirname(libs[0])
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env["OMP_NUM_THREADS"] = str(a.threads)
    env["LD_LIBRARY_PATH"] = d + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env[REEXEC_ENV] = f"OpenBLAS ({d})"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


def main():
    a = parse_args()
    blas = maybe_reexec_with_openblas(a)
    # torch (and check_torch_logits, which imports it) only after the re-exec, so that it loads
    # the chosen libblas.
    import torch
    sys.dont_write_bytecode = True  # no bench/__pycache__ in the source tree
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_torch_logits as ctl
    try:
        return train(a, blas, torch, ctl)
    except ctl.Refused as e:
        raise Refused(str(e)) from None


def train(a, blas, torch, ctl):
    build_peer, check_peer_architecture, find_binary = ctl.build_peer, ctl.check_peer_architecture, ctl.find_binary
    import_peer, load_weights, padded_vocab = ctl.import_peer, ctl.load_weights, ctl.padded_vocab
    read_safetensors, resolve_checkpoint = ctl.read_safetensors, ctl.resolve_checkpoint

    run_dir = os.path.abspath(a.run)
    c, mcfg = train_config(run_dir)
    if c["optimizer"] != "adamw":
        raise Refused(f"{run_dir}: optim.name = {c['optimizer']}; this peer trainer does AdamW only")
    train, vocab = read_token_shard(os.path.join(run_dir, "tokens.train.bin"))
    val, val_vocab = read_token_shard(os.path.join(run_dir, "tokens.val.bin"))
    mcfg["vocab_size"] = vocab  # the trainer gives the model the tokenizer's real size, as the shard header
    check_peer_architecture(mcfg, run_dir, training=True)
    B, T, steps = c["batch"], c["seq_len"], c["steps"]
    last = min(a.max_steps, steps) if a.max_steps > 0 else steps
    N = len(train)
    if N - T > 2 ** 31 or N < T + 1:
        raise Refused(f"{run_dir}: {N} training tokens; BatchSampler needs T + 1 <= N <= 2^31 + T")

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch_gpt = import_peer(a.peers)

    # The batches: all starts up front, checked against our C++ sampler.
    starts = batch_starts(np.arange(steps), B, T, N, c["seed"])
    verified = "not checked"
    if not a.no_verify_batches:
        try:
            dump = find_binary(a.dump_logits, "dump_logits")
        except ctl.Refused as e:
            if a.dump_logits:
                raise
            print(f"warning: batches not checked against the C++ sampler: {e}", flush=True)
        else:
            checked = verify_starts(dump, N, B, T, c["seed"], steps)
            verified = f"identical to BatchSampler at batches {checked}"
    train_t = torch.from_numpy(train)
    offsets = torch.arange(T + 1)

    def get_batch(k):
        w = train_t[torch.from_numpy(starts[k])[:, None] + offsets[None, :]]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    windows = (len(val) - 1) // T
    n_val = windows // B
    if n_val < 1:
        raise Refused(f"{run_dir}: the validation stream ({len(val)} tokens) has no batch of {B} x {T}")
    n_val = min(n_val, c["eval_batches"])
    val_t = torch.from_numpy(val)
    val_batches = []
    for k in range(n_val):
        s = (torch.arange(B) + k * B) * T
        w = val_t[s[:, None] + offsets[None, :]]
        val_batches.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))

    init_seed = c["seed"] if a.init_seed is None else a.init_seed
    torch.manual_seed(init_seed)
    model = build_peer(torch_gpt, mcfg)
    named = list(model.named_parameters())  # the tied lm_head appears once, as wte.weight
    params = [p for _, p in named]
    mask = [c["decay_all"] or not is_no_decay_parameter(n) for n, _ in named]
    groups = [{"params": [p for p, d in zip(params, mask) if d], "weight_decay": c["weight_decay"]},
              {"params": [p for p, d in zip(params, mask) if not d], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"])

    step = 0
    init = f"torch init, manual_seed({init_seed})"
    if a.resume_from:
        model_path = resolve_checkpoint(a.resume_from)
        weights, meta = read_safetensors(model_path)
        cfg = json.loads(meta.get("config", "{}"))
        if padded_vocab(cfg) != padded_vocab(mcfg) or cfg.get("context") != mcfg["context"]:
            raise Refused(f"{model_path}: its config {cfg} does not match the run's recipe")
        load_weights(model, weights, model_path)
        state, smeta = read_safetensors(model_path[:-len(".model.safetensors")] + ".state.safetensors")
        t = int(state["optim.t"].item())
        for i, p in enumerate(params):
            m, v = state.get(f"optim.m.{i}"), state.get(f"optim.v.{i}")
            if m is None or tuple(m.shape) != tuple(p.shape):
                raise Refused(f"{model_path}: optimizer slot {i} ({named[i][0]}) is missing or of another shape")
            opt.state[p] = {"step": torch.tensor(float(t)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        step = int(smeta["step"])
        if int(smeta["sampler_step"]) != step:
            raise Refused(f"{model_path}: sampler_step {smeta['sampler_step']} != step {step} (skipped steps?)")
        init = f"resumed from {model_path} (step {step}, AdamW t = {t})"

    n_params = sum(p.numel() for p in params)
    print(f"torch_train_peer: {run_dir}\n"
          f"  torch {torch.__version__}, {torch.get_num_threads()} threads, BLAS {blas}\n"
          f"  model: peer GPT L={mcfg['layers']} C={mcfg['d_model']} NH={mcfg['heads']} V={vocab} "
          f"Vp={padded_vocab(mcfg)} context={mcfg['context']}: {n_params} parameters; {init}\n"
          f"  data: {N} train / {len(val)} validation tokens; batches {verified}\n"
          f"  train: steps {step + 1}..{last} of {steps}, {B} x {T}, AdamW lr {c['lr']:g} -> {c['min_lr']:g} "
          f"(warmup {c['warmup']}), betas {c['beta1']:g}/{c['beta2']:g}, eps {c['eps']:g}, weight_decay "
          f"{c['weight_decay']:g} ({'all' if c['decay_all'] else 'matrices only'}), grad_clip {c['grad_clip']:g}; "
          f"eval every {c['eval_every']} on {n_val} batches", flush=True)

    def evaluate():
        model.eval()
        with torch.no_grad():
            total = sum(model(x, y).item() for x, y in val_batches)
        model.train()
        return total / len(val_batches)

    model.train()
    ours = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    peer_rows = {}
    window_loss, window_secs, window_steps, skipped, bad = 0.0, 0.0, 0, 0, 0
    val_loss, train_loss = float("nan"), float("nan")
    t_start = time.perf_counter()
    while step < last:
        t0 = time.perf_counter()
        lr = lr_at(step, c)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(step)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))
            if c["grad_clip"] > 0 and math.isfinite(norm) and norm > c["grad_clip"]:
                scale = c["grad_clip"] / norm
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(scale)
        loss_value = loss.item()
        step += 1
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            skipped += 1
            bad += 1
            opt.zero_grad(set_to_none=True)
            print(f"step {step}: loss {loss_value}, gradient norm {norm} are not finite; step skipped", flush=True)
            if bad >= c["max_bad_steps"]:
                raise RuntimeError(f"training diverged: {bad} non-finite steps in a row at step {step}")
            continue
        bad = 0
        opt.step()
        secs = time.perf_counter() - t0
        window_loss += loss_value
        window_secs += secs
        window_steps += 1
        train_loss = loss_value
        eval_now = step % c["eval_every"] == 0 or step == steps or step == last
        if step % c["log_every"] == 0 or eval_now or step == 1:
            avg = window_loss / window_steps
            row = {"train_loss": avg}
            line = f"step {step} train_loss {avg:.6f}"
            if eval_now:
                val_loss = evaluate()
                row["val_loss"] = val_loss
                line += f" val_loss {val_loss:.6f}"
            peer_rows[step] = row
            print(f"{line} lr {lr:.4e} grad_norm {norm:.4f} ms_per_step {1000 * window_secs / window_steps:.1f}",
                  flush=True)
            window_loss, window_secs, window_steps = 0.0, 0.0, 0
    elapsed = time.perf_counter() - t_start

    common = [s for s in sorted(peer_rows) if s in ours]
    if common:
        print(f"comparison with {os.path.join(run_dir, 'metrics.jsonl')} (ours = attnlab, peer = this run):")
        for s in common:
            o, p = ours[s], peer_rows[s]
            line = (f"COMPARE step {s} train_loss ours {o['train_loss']:.6f} peer {p['train_loss']:.6f} "
                    f"(diff {p['train_loss'] - o['train_loss']:+.6f})")
            if "val_loss" in o and "val_loss" in p:
                line += (f"  val_loss ours {o['val_loss']:.6f} peer {p['val_loss']:.6f} "
                         f"(diff {p['val_loss'] - o['val_loss']:+.6f})")
            print(line)
    print(f"RESULT val_loss={val_loss:.6f} steps={step} train_loss={train_loss:.6f} skipped={skipped} "
          f"seconds={elapsed:.1f} threads={torch.get_num_threads()}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refused as e:
        print(f"torch_train_peer: {e}", file=sys.stderr)
        sys.exit(2)
