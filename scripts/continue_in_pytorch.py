"""Continue a ChottaGPT run in PyTorch, data-parallel: the README's "Outgrowing one machine".

    npx chotta export --ckpt runs/tiny --out runs/tiny-hf
    torchrun --nproc_per_node 2 scripts/continue_in_pytorch.py --model runs/tiny-hf \
        --data data/wikitext-2-raw/wiki.valid.raw --steps 20 --out runs/tiny-hf-ddp

Each process (one per GPU with NCCL, or per CPU core group with gloo) loads the exported folder in
transformers' GPT2LMHeadModel, wraps it in DistributedDataParallel, and trains on its own windows
of the corpus with the GPT-3 recipe chotta uses (AdamW 0.9/0.95, weight decay 0.1 on 2-D+ tensors,
clipping at 1.0). Rank 0 prints the loss averaged over ranks and saves the result with
save_pretrained, which `chotta sample --ckpt hf:OUT` reads back.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoTokenizer, GPT2LMHeadModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a folder written by chotta export")
    p.add_argument("--data", required=True, help="a text file to train on")
    p.add_argument("--out", required=True, help="where rank 0 saves the model (save_pretrained)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="sequences per process per step")
    p.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu")

    tok = AutoTokenizer.from_pretrained(args.model)
    model = GPT2LMHeadModel.from_pretrained(args.model).to(device)
    T = model.config.n_positions
    with open(args.data, encoding="utf-8") as f:
        ids = torch.tensor(tok(f.read())["input_ids"], dtype=torch.long)
    ddp = DistributedDataParallel(model)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(1337 + rank)  # each rank draws its own windows
    if rank == 0:
        print(f"{world} processes ({backend}), {len(ids)} tokens, context {T}, {args.batch} sequences per process per step")
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - T - 1, (args.batch,), generator=g)
        x = torch.stack([ids[s : s + T] for s in starts]).to(device)
        loss = ddp(input_ids=x, labels=x).loss  # transformers shifts the labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step + 1}: loss {mean.item() / world:.4f}")
    if rank == 0:
        model.save_pretrained(args.out)
        tok.save_pretrained(args.out)
        print(f"saved {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
