#!/usr/bin/python3
"""Does our model compute what the PyTorch peer computes with the same weights?

  /usr/bin/python3 bench/check_torch_logits.py RUN_OR_CHECKPOINT [--ids 1,2,3,...] [--rtol 1e-4]

RUN_OR_CHECKPOINT is what `attnlab sample` takes: a run directory (its latest checkpoint), a
checkpoints directory or a *.model.safetensors file. The script
  1. reads the checkpoint with its own small safetensors reader (json + torch.frombuffer) and
     the model config from its "config" metadata,
  2. builds the peer GPT (../shared/peers/torch_gpt.py, or --peers DIR) with the same L, C, NH,
     padded vocabulary Vp and block_size = context, and loads the weights (wte copied into the
     tied lm_head),
  3. runs bench/dump_logits (our C++ forward, eval mode) on a fixed id sequence,
  4. runs the peer on the same ids in float32 (and float64, for reference) and compares.
Prints the max abs difference and PASS when max|ours - peer| <= rtol * max(1, max|peer|), FAIL
(exit 1) otherwise; exit 2 for a checkpoint the peer cannot express (the peer is GPT-2 only:
layernorm, GELU MLP of 4 * d_model, learned positions, tied embeddings, biases, softmax attention)
or another usage error.

The dump_logits binary: --dump-logits PATH, else $ATTNLAB_BUILD_DIR/bench/dump_logits, else the
first of build/ and build-peer/ under the repository that has it.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEERS = "/work/shared/peers"
MODEL_SUFFIX = ".model.safetensors"


class Refused(Exception):
    """A checkpoint or run the peer cannot reproduce (exit code 2)."""


# ---- safetensors ------------------------------------------------------------------------------

_DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "I32": (torch.int32, 4),
           "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "F16": (torch.float16, 2)}


def read_safetensors(path):
    """-> ({name: tensor}, {metadata}). Little-endian, as the format says (and x86 is)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise Refused(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise Refused(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise Refused(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know")
        dtype, width = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * width or end > len(body):
            raise Refused(f"{path}: tensor {name} has {end - begin} bytes for shape {shape} {info['dtype']}")
        raw = bytearray(body[begin:end])  # a writable copy: frombuffer shares it
        t = torch.frombuffer(raw, dtype=dtype) if count else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    return tensors, meta


def resolve_checkpoint(path):
    """The model file of a run directory / checkpoints directory / model file (as train/checkpoint.cpp)."""
    if not os.path.exists(path):
        raise Refused(f"checkpoint '{path}' does not exist")
    if os.path.isfile(path):
        if not path.endswith(MODEL_SUFFIX):
            raise Refused(f"'{path}' is not a checkpoint (expected a run directory or a *{MODEL_SUFFIX} file)")
        return path
    d = path
    if os.path.exists(os.path.join(d, "checkpoints")):
        d = os.path.join(d, "checkpoints")
    latest = os.path.join(d, "latest")
    if not os.path.isfile(latest):
        raise Refused(f"'{path}' has no checkpoints (no {latest})")
    with open(latest) as f:
        name = f.readline().strip()
    model = os.path.join(d, name + MODEL_SUFFIX)
    if not name or "/" in name or not os.path.isfile(model):
        raise Refused(f"'{latest}' names '{name}', but {model} is missing")
    return model


def run_dir_of_checkpoint(model_path):
    return os.path.dirname(os.path.dirname(os.path.abspath(model_path)))


# ---- the peer -------------------------------------------------------------------------------

def import_peer(peers_dir):
    peers_dir = os.path.abspath(peers_dir)
    if not os.path.isfile(os.path.join(peers_dir, "torch_gpt.py")):
        raise Refused(f"no torch_gpt.py in {peers_dir} (pass --peers DIR)")
    if peers_dir not in sys.path:
        sys.path.insert(0, peers_dir)
    import torch_gpt  # noqa: E402  (the peer's GPT class, used as is)
    return torch_gpt


def padded_vocab(cfg):
    pad = max(int(cfg.get("vocab_pad", 1)), 1)
    return (int(cfg["vocab_size"]) + pad - 1) // pad * pad


def check_peer_architecture(cfg, what, training=False):
    """Raises Refused unless the peer (GPT-2: layernorm, GELU 4C MLP, learned positions, tied
    embeddings, biases, softmax attention) computes the same function as a model of `cfg`."""
    C = int(cfg["d_model"])
    wrong = []
    want = {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "attention": "softmax",
            "bias": True, "tie_embeddings": True}
    for key, value in want.items():
        if cfg.get(key, value) != value:
            wrong.append(f"{key} = {json.dumps(cfg.get(key))} (the peer has {json.dumps(value)})")
    hidden = int(cfg.get("mlp_hidden", 0))
    if hidden not in (0, 4 * C):
        wrong.append(f"mlp_hidden = {hidden} (the peer's MLP is 4 * d_model = {4 * C})")
    if training and float(cfg.get("dropout", 0.0)) > 0:
        wrong.append(f"dropout = {cfg['dropout']} (the peer has no dropout)")
    if wrong:
        raise Refused(f"{what}: the PyTorch peer is GPT-2 only and cannot reproduce this model: " + "; ".join(wrong))


def build_peer(torch_gpt, cfg):
    """The peer GPT with our shapes (its own init; load weights afterwards)."""
    return torch_gpt.GPT(int(cfg["layers"]), int(cfg["d_model"]), int(cfg["heads"]), padded_vocab(cfg),
                         int(cfg["context"]), "explicit")


def load_weights(model, weights, source):
    """Our state dict into the peer: same names; the tied lm_head gets wte."""
    sd = {k: v for k, v in weights.items()}
    if "lm_head.weight" in sd:
        raise Refused(f"{source}: has lm_head.weight (untied embeddings); the peer ties them")
    sd["lm_head.weight"] = sd["wte.weight"]
    theirs = model.state_dict()
    missing = sorted(set(theirs) - set(sd))
    extra = sorted(set(sd) - set(theirs))
    if missing or extra:
        raise Refused(f"{source}: parameter names differ from the peer's: missing {missing}, unexpected {extra}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(theirs[k].shape):
            raise Refused(f"{source}: {k} is {list(v.shape)}, the peer's is {list(theirs[k].shape)}")
    model.load_state_dict({k: v.to(theirs[k].dtype) for k, v in sd.items()}, strict=True)


def peer_logits(model, ids):
    """The peer's forward up to the logits (its forward() returns only the loss)."""
    B, T = ids.shape
    pos = torch.arange(T, dtype=torch.long)
    x = model.wte(ids) + model.wpe(pos)
    for block in model.h:
        x = block(x)
    return model.lm_head(model.ln_f(x))


def find_binary(explicit, name):
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise Refused(f"{explicit} is not an executable")
        return explicit
    dirs = [os.environ["ATTNLAB_BUILD_DIR"]] if os.environ.get("ATTNLAB_BUILD_DIR") else []
    dirs += [os.path.join(ROOT, "build"), os.path.join(ROOT, "build-peer")]
    for d in dirs:
        p = os.path.join(d, "bench", name)
        if os.access(p, os.X_OK):
            return p
    raise Refused(f"no {name} binary in {', '.join(dirs)}: build it (cmake --build BUILD_DIR --target {name}) "
                  f"or pass --dump-logits PATH")


# ---- main -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory, checkpoints directory or *.model.safetensors")
    p.add_argument("--ids", default="", help="ids for dump_logits (1,2,3 ; rows separated by ';'); "
                                              "default: its 2 x min(context, 64) pseudo-random ids")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="PASS when max|ours - peer| <= rtol * max(1, max|peer|) (default 1e-4)")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"folder of torch_gpt.py (default {DEFAULT_PEERS})")
    p.add_argument("--dump-logits", default="", help="path of the dump_logits binary")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default nproc)")
    p.add_argument("--keep", default="", help="also keep dump_logits' output file here")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    model_path = resolve_checkpoint(a.checkpoint)
    weights, meta = read_safetensors(model_path)
    if "config" not in meta:
        raise Refused(f"{model_path}: no 'config' metadata (not an attnlab checkpoint)")
    cfg = json.loads(meta["config"])
    check_peer_architecture(cfg, model_path)
    torch_gpt = import_peer(a.peers)
    dump = find_binary(a.dump_logits, "dump_logits")

    with tempfile.TemporaryDirectory() as tmp:
        out = a.keep or os.path.join(tmp, "logits.safetensors")
        cmd = [dump, model_path, out] + (["--ids", a.ids] if a.ids else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            raise Refused(f"{' '.join(cmd)} failed with exit code {r.returncode}")
        dumped, _ = read_safetensors(out)
    ids = dumped["ids"].to(torch.long)
    ours = dumped["logits"].to(torch.float32)

    Vp = padded_vocab(cfg)
    print(f"checkpoint {model_path}")
    print(f"config L={cfg['layers']} C={cfg['d_model']} NH={cfg['heads']} V={cfg['vocab_size']} Vp={Vp} "
          f"context={cfg['context']}; ids [{ids.shape[0]}, {ids.shape[1]}]; dump_logits {dump}")
    results = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = build_peer(torch_gpt, cfg).to(dtype)
        load_weights(model, weights, model_path)
        model.eval()
        with torch.no_grad():
            results[dtype] = peer_logits(model, ids)
    peer32, peer64 = results[torch.float32], results[torch.float64]
    if tuple(ours.shape) != tuple(peer32.shape):
        print(f"FAIL: our logits are {list(ours.shape)}, the peer's {list(peer32.shape)}")
        return 1
    scale = max(1.0, peer32.abs().max().item())
    diff = (ours - peer32).abs().max().item()
    d64_ours = (ours.double() - peer64).abs().max().item()
    d64_peer = (peer32.double() - peer64).abs().max().item()
    real = int(cfg["vocab_size"])
    diff_real = (ours[..., :real] - peer32[..., :real]).abs().max().item()
    argmax_same = (ours[..., :real].argmax(-1) == peer32[..., :real].argmax(-1)).float().mean().item()
    print(f"max|logits| {scale:.4g}  max abs diff ours vs peer(f32) {diff:.3e} (real vocab {diff_real:.3e}), "
          f"relative {diff / scale:.3e}")
    print(f"  against peer(f64): ours {d64_ours:.3e}, peer(f32) {d64_peer:.3e}; argmax agreement {argmax_same:.4f}")
    ok = diff <= a.rtol * scale and np.isfinite(diff)
    print(f"{'PASS' if ok else 'FAIL'}: max abs diff {diff:.3e} {'<=' if ok else '>'} "
          f"rtol {a.rtol:g} * {scale:.4g} = {a.rtol * scale:.3e}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refused as e:
        print(f"check_torch_logits: {e}", file=sys.stderr)
        sys.exit(2)
