"""A plain KV-cache decode loop for evaluation: all samples of many prompts decoded together.

Why not `model.generate`: on a 2-core CPU it reached a fifth of this loop's tokens/s or less
(bench/bench_inference.py). What the loop does differently, none of it changing a result's distribution:
- each prompt is run once (prefill) and its cache copied to its n samples, not run n times;
- a finished sequence leaves the batch (its cache rows are dropped), so no forward pass is spent on
  finished or padded sequences, and prompts waiting their turn take the freed places (continuous
  batching: the batch stays full instead of dwindling to its longest sequence);
- the stop string is looked for only when a sequence emits a token holding its last character;
- draws use the 512 most likely tokens when the top-p nucleus lies among them (exact: other rows
  use the whole vocabulary), and an inverse-CDF draw rather than torch.multinomial (slow on CPU).
The sampling distribution is Hugging Face's: temperature, then top-k (0: off), then top-p (the
smallest set of most likely tokens whose probability reaches top_p), then a draw; temperature 0 is
greedy. Draws come from one generator seeded per call: a call reproduces exactly with its seed and
batch size (another batch size draws other, equally valid samples).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TOP_CANDIDATES = 512
_STOP_TOKENS: dict = {}  # (tokenizer id, size, stop) -> bool mask of token ids holding the stop's last character


def stop_candidates(tok, stop: str) -> torch.Tensor:
    """Token ids that can complete `stop`: those whose decoded text contains its last character."""
    key = (id(tok), len(tok), stop)
    if key not in _STOP_TOKENS:
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        _STOP_TOKENS[key] = torch.tensor([stop[-1] in t for t in texts], dtype=torch.bool)
    return _STOP_TOKENS[key]


def draw(weights: torch.Tensor, gen) -> torch.Tensor:
    """One index per row, with probability proportional to the row's non-negative weights."""
    c = weights.cumsum(-1)
    total = c[:, -1:]
    u = torch.minimum(torch.rand(total.shape, generator=gen, device=c.device, dtype=c.dtype) * total,
                      torch.nextafter(total, torch.zeros_like(total)))  # never the total itself
    return torch.searchsorted(c, u, right=True).squeeze(-1)


def next_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else a draw from the filtered distribution."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    k = min(TOP_CANDIDATES, vocab)
    top, idx = torch.topk(logits, k, dim=-1)  # descending
    if top_k and top_k < vocab:
        if top_k > k:  # a top-k wider than the candidates: filter the whole vocabulary
            return draw(torch.softmax(_full_filter(logits, top_k, top_p), -1), gen)
        top[:, top_k:] = float("-inf")
        probs = torch.softmax(top, -1)  # top-p applies to the renormalized top-k distribution
    else:
        probs = torch.exp(top - torch.logsumexp(logits, -1, keepdim=True))
    before = probs.cumsum(-1) - probs  # the probability of the more likely tokens
    keep = (before < top_p) | (torch.arange(k, device=logits.device) == 0)
    wide = (before[:, -1] + probs[:, -1] < top_p) if top_p < 1.0 else torch.ones_like(keep[:, 0])
    if top_k and top_k <= k:
        wide = torch.zeros_like(wide)  # the nucleus lies in the top-k
    out = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    narrow = ~wide
    if narrow.any():
        out[narrow] = idx[narrow].gather(1, draw(probs[narrow] * keep[narrow], gen)[:, None]).squeeze(1)
    if wide.any():
        out[wide] = draw(torch.softmax(_full_filter(logits[wide], 0, top_p), -1), gen)
    return out


def _full_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Hugging Face's top-k then top-p filter over the whole vocabulary (the slow, general path)."""
    if top_k:
        logits = logits.masked_fill(logits < torch.topk(logits, top_k, -1).values[:, -1:], float("-inf"))
    if top_p >= 1.0:
        return logits
    srt, sidx = torch.sort(logits, descending=True, dim=-1)
    p = torch.softmax(srt, -1)
    drop = (p.cumsum(-1) - p) >= top_p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, sidx, drop), float("-inf"))


@dataclass
class Batch:
    """The sequences in flight: their cache, attention mask, last position and next-token logits.
    rows[i] = (prompt index, sample index) of batch row i."""

    cache: object
    mask: torch.Tensor
    last: torch.Tensor
    logits: torch.Tensor
    rows: list

    def select(self, keep: list[int]) -> None:
        k = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(k)
        self.mask, self.last, self.rows = self.mask[k], self.last[k], [self.rows[i] for i in keep]
        lead = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # columns no row attends to any more
        if lead and mergeable(self.cache):
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]


def mergeable(cache) -> bool:
    """Plain per-layer key/value tensors (not sliding-window or quantized): rows can be added."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def merge(a: Batch, b: Batch) -> Batch:
    """One batch of both, the shorter left-padded (masked) to the longer's length."""
    n = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x, dim_from_end):
        return F.pad(x, (0, 0) * (dim_from_end - 1) + (n - x.shape[-dim_from_end], 0))

    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)])
        la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)])
    return Batch(a.cache, torch.cat([pad(a.mask, 1), pad(b.mask, 1)]), torch.cat([a.last, b.last]),
                 torch.cat([a.logits, b.logits]), a.rows + b.rows)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists left-padded to one length: (input_ids, attention_mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
    return ids, mask


def prefill(model, prompts: list[list[int]], first: int, n: int, pad_id: int) -> Batch:
    """Run left-padded prompts once; their cache, copied for n samples each."""
    ids, mask = left_pad(prompts, pad_id, next(model.parameters()).device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.cache
    if n > 1:
        cache.batch_repeat_interleave(n)
    rows = [(first + i, s) for i in range(len(prompts)) for s in range(n)]
    return Batch(cache, mask.repeat_interleave(n, 0), pos[:, -1].repeat_interleave(n, 0),
                 out.logits[:, -1].repeat_interleave(n, 0), rows)


@torch.no_grad()
def decode(model, tok, prompts: list[list[int]], n: int, *, sequences: int, max_new_tokens: int, temperature: float,
           top_k: int, top_p: float, gen, stop: str | None, eos: set[int], on_done=None,
           min_new_tokens: int = 0) -> list[list[list[int]]]:
    """n generated token-id lists per prompt, at most `sequences` in flight (at least one prompt's n).

    A sequence ends at an EOS token (not kept), at the first token that completes `stop` (kept, as
    generate keeps it; the caller cuts the text) or after max_new_tokens; before min_new_tokens the EOS
    tokens cannot be drawn and the stop string is not looked for (generate's min_new_tokens; benchmarks
    use it for fixed-length decoding). on_done(prompt index) is called when a prompt's last sample ends."""
    out = [[[] for _ in range(n)] for _ in prompts]
    running = [n] * len(prompts)
    can_stop = stop_candidates(tok, stop) if stop else None
    per_fill = max(1, sequences // n)
    nxt, batch = 0, None
    while nxt < len(prompts) or batch:
        free = sequences - (len(batch.rows) if batch else 0)
        if nxt < len(prompts) and (not batch or (free >= max(n, sequences // 4) and mergeable(batch.cache))):
            take = prompts[nxt:nxt + max(1, min(per_fill, free // n))]
            new = prefill(model, take, nxt, n, tok.pad_token_id)
            batch = merge(batch, new) if batch else new
            nxt += len(take)
        if min_new_tokens and eos:
            young = torch.tensor([len(out[p][s]) < min_new_tokens for p, s in batch.rows], device=batch.logits.device)
            if young.any():
                banned = torch.tensor(sorted(eos), device=batch.logits.device)
                batch.logits[young.nonzero()[:, :1], banned] = float("-inf")
        tokens = next_tokens(batch.logits, temperature, top_k, top_p, gen).tolist()
        keep = []
        for r, ((p, s), t) in enumerate(zip(batch.rows, tokens)):
            seq = out[p][s]
            if t not in eos:
                seq.append(t)
            ended = (t in eos or len(seq) >= max_new_tokens
                     or (stop and len(seq) >= min_new_tokens and can_stop[t]
                         and stop in tok.decode(seq[-len(stop) - 1:])))
            if not ended:
                keep.append(r)
                continue
            running[p] -= 1
            if running[p] == 0 and on_done:
                on_done(p)
        if not keep:
            batch = None
            continue
        if len(keep) < len(batch.rows):
            batch.select(keep)
        step = torch.tensor([tokens[r] for r in keep], device=batch.mask.device)[:, None]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(keep), 1)], -1)
        batch.last = batch.last + 1
        o = model(input_ids=step, attention_mask=batch.mask, position_ids=batch.last[:, None],
                  cache=batch.cache, use_cache=True)
        batch.logits = o.logits[:, -1]
    return out
