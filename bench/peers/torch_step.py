"""PyTorch on the CPU as a benchmark peer (bench/peers/torch-peer.ts starts this, one process per peer).

The GPT training step of models/gpt.ts in torch ops, as bench/peers/peer.ts documents it: token +
position embedding; pre-norm blocks (LayerNorm eps 1e-5, causal softmax attention scaled by
1/sqrt(head_size), MLP with GPT-2's tanh GELU); final LayerNorm; LM head tied to wte; cross-entropy
averaged over B*T. Linear weights are [out, in]. Then torch.nn.utils.clip_grad_norm_(max_norm) and
torch.optim.AdamW (two groups: weight decay on 2-D+ parameters only, none on the rest): the arithmetic
runtime/train/adamw.ts follows.

Protocol, on stdin/stdout (stdout carries nothing else; diagnostics go to stderr). Each request is one
JSON line, followed by `nbytes` bytes of little-endian binary data when the header says so; each
reply is one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}), followed by `nbytes`
bytes when it says so.

  {"cmd": "init", "config": {...}, "lr": x, "adamw": {...}, "threads": n,
   "params": [{"name", "shape"}...], "nbytes": n}   + every parameter, float32, in that order
      -> {"ok": true, "torch": version, "threads": n, "blas": "...", "interop_threads": n}
  {"cmd": "step", "nbytes": n}                      + idx then targets, int32, B*T each
      -> {"ok": true, "loss": x}                    (the loss before the update)
  {"cmd": "params"}                                 -> {"ok": true, "nbytes": n} + the parameters, float32
  {"cmd": "quit"}                                   -> exits

If torch cannot be imported, the first reply is {"ok": false, "skip": true, "error": ...}.
"""

import json
import math
import re
import sys

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer


def reply(obj, payload=b""):
    if payload:
        obj["nbytes"] = len(payload)
    stdout.write(json.dumps(obj).encode() + b"\n")
    if payload:
        stdout.write(payload)
    stdout.flush()


def read_exact(n):
    data = stdin.read(n) if n else b""
    if len(data) != n:
        raise EOFError(f"expected {n} bytes, got {len(data)}")
    return data


try:
    import torch
    import torch.nn.functional as F
except Exception as err:  # ImportError, or a broken install (missing BLAS library, ...)
    header = stdin.readline()
    reply({"ok": False, "skip": True, "error": f"{sys.executable} cannot import torch: {type(err).__name__}: {err}"})
    sys.exit(0)


def blas_description():
    """Which BLAS torch's GEMMs run on: the BLAS libraries mapped into this process, and torch's build info."""
    found = re.search(r"BLAS_INFO=([^,\s]*)", torch.__config__.show())
    build = f"torch BLAS_INFO={found.group(1) if found else '?'}"
    libs = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = path.rsplit("/", 1)[-1]
                if "blas" in name or name.startswith("libmkl"):
                    libs.add(path)
    except OSError:
        pass
    openblas = next((p for p in sorted(libs) if "openblas" in p.rsplit("/", 1)[-1]), None)
    if openblas:
        try:
            import ctypes
            lib = ctypes.CDLL(openblas)
            lib.openblas_get_config.restype = ctypes.c_char_p
            words = lib.openblas_get_config().decode().split()
            core = lib.openblas_get_corename
            core.restype = ctypes.c_char_p
            return f"BLAS: OpenBLAS {words[1]} ({core().decode()} kernels, {lib.openblas_get_num_threads()} threads; {', '.join(sorted(libs))}; {build})"
        except (OSError, AttributeError, IndexError):
            pass
    return f"BLAS: {', '.join(sorted(libs)) or 'no BLAS library mapped'} ({build})"


class Gpt:
    def __init__(self, config, params):
        self.c = config
        self.P = params  # name -> leaf tensor with requires_grad

    def loss(self, idx, targets):
        c, P = self.c, self.P
        B, T = idx.shape
        C, nh = c["nEmbd"], c["nHead"]
        hs = C // nh
        bias = c["bias"]

        def linear(x, name):
            return F.linear(x, P[f"{name}.weight"], P[f"{name}.bias"] if bias else None)

        def layer_norm(x, name):
            return F.layer_norm(x, (C,), P[f"{name}.weight"], P[f"{name}.bias"] if bias else None, 1e-5)

        def heads(t):
            return t.view(B, T, nh, hs).transpose(1, 2)  # [B, nh, T, hs]

        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = F.embedding(idx, P["wte.weight"]) + P["wpe.weight"][:T]
        for l in range(c["nLayer"]):
            h = f"h.{l}"
            q, k, v = linear(layer_norm(x, f"{h}.ln_1"), f"{h}.attn.c_attn").split(C, dim=-1)
            q, k, v = heads(q), heads(k), heads(v)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + linear(y, f"{h}.attn.c_proj")
            x = x + linear(F.gelu(linear(layer_norm(x, f"{h}.ln_2"), f"{h}.mlp.c_fc"), approximate="tanh"), f"{h}.mlp.c_proj")
        x = layer_norm(x, "ln_f")
        logits = x @ P["wte.weight"].t()  # tied LM head
        return F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))


def main():
    model = optimizer = None
    names, max_norm, B, T = [], 1.0, 0, 0
    while True:
        line = stdin.readline()
        if not line:
            return
        req = json.loads(line)
        payload = read_exact(req.get("nbytes", 0))
        try:
            cmd = req["cmd"]
            if cmd == "init":
                torch.set_num_threads(int(req["threads"]))
                config, o = req["config"], req["adamw"]
                B, T = config["batchSize"], config["blockSize"]
                flat = torch.frombuffer(bytearray(payload), dtype=torch.float32)
                params, offset = {}, 0
                for p in req["params"]:
                    n = math.prod(p["shape"])
                    params[p["name"]] = flat[offset:offset + n].clone().view(p["shape"]).requires_grad_(True)
                    offset += n
                if offset != flat.numel():
                    raise ValueError(f"init: {flat.numel()} floats sent, the shapes need {offset}")
                names = [p["name"] for p in req["params"]]
                model = Gpt(config, params)
                max_norm = o["maxGradNorm"]
                groups = [
                    {"params": [params[n] for n in names if params[n].dim() >= 2], "weight_decay": o["weightDecay"]},
                    {"params": [params[n] for n in names if params[n].dim() < 2], "weight_decay": 0.0},
                ]
                optimizer = torch.optim.AdamW(groups, lr=req["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
                reply({"ok": True, "torch": torch.__version__, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(), "blas": blas_description()})
            elif cmd == "step":
                ids = torch.frombuffer(bytearray(payload), dtype=torch.int32).long()
                if ids.numel() != 2 * B * T:
                    raise ValueError(f"step: {ids.numel()} ids sent, expected 2 x {B} x {T}")
                idx, targets = ids[: B * T].view(B, T), ids[B * T :].view(B, T)
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(idx, targets)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(model.P.values()), max_norm)
                optimizer.step()
                reply({"ok": True, "loss": loss.item()})
            elif cmd == "params":
                with torch.no_grad():
                    data = torch.cat([model.P[n].detach().reshape(-1) for n in names]).numpy().tobytes()
                reply({"ok": True}, data)
            elif cmd == "quit":
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as err:
            reply({"ok": False, "error": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    main()
