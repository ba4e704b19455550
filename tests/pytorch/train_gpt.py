"""The PyTorch twin of `cargo xtask bench gpt` and `bench gpt2`: the same GPT (tied LM
head, pre-LayerNorm blocks, tanh GELU) in nanoGPT's shakespeare_char shape (byte
vocabulary) or GPT-2 small's (`--shape gpt2_small`: vocabulary 50,304, context 256; the
text's bytes as token ids, which cost the same), the same data split, batch size,
optimizer and schedule, on the CPU with a given thread count. Prints one JSON line:
{"tokens_per_s", "iters", "train_loss", "torch", "peak_rss_mb"}."""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# (vocab, block, layers, heads, width, rows) of each shape.
SHAPES = {"shakespeare_char": (256, 64, 4, 4, 128, 12), "gpt2_small": (50304, 256, 12, 12, 768, 1)}
VOCAB, BLOCK, LAYERS, HEADS, WIDTH, ROWS = SHAPES["shakespeare_char"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.c_attn = nn.Linear(WIDTH, 3 * WIDTH)
        self.c_proj = nn.Linear(WIDTH, WIDTH)
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.c_fc = nn.Linear(WIDTH, 4 * WIDTH)
        self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        # nanoGPT's (and crowdgrad's) init: N(0, 0.02), residual projections scaled down.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def lr_at(step, iters):
    if step < 100:
        return 1e-3 * (step + 1) / 101
    ratio = min(1.0, (step - 100) / max(1, iters - 100))
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="shakespeare_char")
    parser.add_argument("--rows", type=int, help="windows per batch (default: the shape's)")
    parser.add_argument("--block", type=int, help="context (default: the shape's)")
    args = parser.parse_args()
    global VOCAB, BLOCK, LAYERS, HEADS, WIDTH, ROWS
    VOCAB, BLOCK, LAYERS, HEADS, WIDTH, ROWS = SHAPES[args.shape]
    ROWS, BLOCK = args.rows or ROWS, args.block or BLOCK
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    data = torch.frombuffer(bytearray(open(args.dataset, "rb").read()), dtype=torch.uint8).long()
    train = data[: len(data) * 9 // 10]
    model = GPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    start, loss = None, None
    for step in range(args.iters + 2):
        if step == 2:  # two warm-up steps, as the Rust bench
            start = time.perf_counter()
        ix = torch.randint(len(train) - BLOCK - 1, (ROWS,))
        x = torch.stack([train[i:i + BLOCK] for i in ix])
        y = torch.stack([train[i + 1:i + 1 + BLOCK] for i in ix])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.iters)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(json.dumps({"tokens_per_s": args.iters * ROWS * BLOCK / seconds, "iters": args.iters,
                      "train_loss": loss.item(), "torch": torch.__version__, "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
