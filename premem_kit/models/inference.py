"""Batched inference shared by evaluate.py, the benchmarks, the live-prediction callback and RFT:
sampling with stop strings, teacher-forced target perplexity, and greedy answers with their likelihood.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from premem_kit.models import decoding
from premem_kit.tasks import data as data_mod

STOP = data_mod.TARGET_END  # "\nDone."


def _device(model):
    return next(model.parameters()).device


def _is_oom(e: Exception) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


SEQUENCES_PER_BATCH = {"cpu": 128, "cuda": 256}  # sized by the decode-rate curve in bench/bench_inference.py


def prompts_per_batch(batch_size: int | None, n: int, device) -> int:
    """Prompts decoded together: batch_size if given, else as many as fill the device's sequence budget."""
    if batch_size:
        return batch_size
    return max(1, SEQUENCES_PER_BATCH.get(torch.device(device).type, 128) // max(n, 1))


@torch.no_grad()
def sample(model, tok, prompts, n=5, temperature=0.8, top_p=0.95, max_new_tokens=512, batch_size=None,
           seed=2, stop=STOP, greedy=False, desc="sampling", progress=True, top_k=0, max_length=None,
           sampler="loop"):
    """n completions per prompt (the text after the prompt, cut before `stop`).

    top_k 0 samples from the whole (top-p) distribution, the authors' vLLM sampler; top_k 50 is Hugging
    Face's generate default (Yuan et al.'s RFT sampler). temperature 0 is greedy decoding: one greedy
    completion per prompt, repeated n times (greedy=True returns it once).

    Prompts are sorted by length (longest first, so an out-of-memory shows up on the first batch), cut
    from the left past max_length - 1 tokens as in training (data.tokenize_prompt), left-padded, and
    decoded batch_size prompts (x n samples) at a time; batch_size None fills the device
    (SEQUENCES_PER_BATCH). sampler "loop" is the kit's decode loop (models/decoding.py), "generate"
    Hugging Face's model.generate (the kit's sampler before 2026-12; slower, same distribution). On
    CUDA out-of-memory the batch halves and is retried. Returns (completions, n_tokens): completions[i]
    is the list of n strings for prompts[i], n_tokens the generated tokens.
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    ids = [data_mod.tokenize_prompt(tok, p, max_length)[0] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    deterministic = greedy or temperature == 0
    n_ret = 1 if deterministic else n
    bs = prompts_per_batch(batch_size, n_ret, device)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
    while True:
        try:
            if sampler == "generate":
                texts, ntok = _sample_generate(model, tok, [ids[j] for j in order], n_ret, bs, deterministic,
                                               temperature, top_p, top_k, max_new_tokens, stop, bar)
            else:
                gen = torch.Generator(device=device).manual_seed(seed)
                seqs = decoding.decode(model, tok, [ids[j] for j in order], n_ret, sequences=bs * n_ret,
                                       max_new_tokens=max_new_tokens, temperature=0 if deterministic else temperature,
                                       top_k=top_k, top_p=top_p, gen=gen, stop=stop, eos=_eos_ids(model, tok),
                                       on_done=lambda _: bar.update(1),
                                       min_new_tokens=getattr(getattr(model, "generation_config", None),
                                                              "min_new_tokens", None) or 0)
                texts = [tok.batch_decode(s, skip_special_tokens=True) for s in seqs]
                ntok = sum(len(x) for s in seqs for x in s)
            break
        except Exception as e:
            if _is_oom(e) and bs > 1:
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
                bar.write(f"out of memory: batch size halved to {bs} prompts; starting again")
                bar.reset()
                continue
            raise
    bar.close()
    out: list[list[str] | None] = [None] * len(prompts)
    for k, j in enumerate(order):
        out[j] = [cut(t, stop) for t in texts[k]] * (n if deterministic and not greedy else 1)
    model.train(was_training)
    return out, ntok


def _eos_ids(model, tok) -> set[int]:
    """The ids that end a sequence, as generate takes them (the generation config, else the tokenizer)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tok.eos_token_id if eos is None else eos
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def _sample_generate(model, tok, ids, n_ret, bs, deterministic, temperature, top_p, top_k, max_new_tokens, stop,
                     bar):
    """The earlier sampler: model.generate on bs prompts at a time. Returns (texts per prompt, tokens)."""
    gen_kw = dict(max_new_tokens=max_new_tokens, num_return_sequences=n_ret, pad_token_id=tok.pad_token_id,
                  stop_strings=[stop] if stop else None, tokenizer=tok if stop else None, use_cache=True)
    if deterministic:
        gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        gen_kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    texts, ntok = [], 0
    for i in range(0, len(ids), bs):
        input_ids, mask = decoding.left_pad(ids[i:i + bs], tok.pad_token_id, _device(model))
        new = model.generate(input_ids=input_ids, attention_mask=mask, **gen_kw)[:, input_ids.shape[1]:]
        flat = tok.batch_decode(new, skip_special_tokens=True)
        texts += [flat[k:k + n_ret] for k in range(0, len(flat), n_ret)]
        ntok += int((new != tok.pad_token_id).sum())
        bar.update(len(input_ids))
    return texts, ntok


def cut(text: str, stop: str = STOP) -> str:
    k = text.find(stop) if stop else -1
    return text if k < 0 else text[:k]


@torch.no_grad()
def target_nll(model, tok, prompts, targets, batch_size=16, max_length=None, desc="perplexity", progress=True):
    """Per example: (mean NLL over the target tokens, number of target tokens), teacher-forced.

    The tokens scored are exactly those data.encode gives labels to, i.e. what the training loss sees.
    Batches are left-padded with explicit position ids, so every target ends at the last position and
    the LM head runs only on the last (longest target + 1) positions (`logits_to_keep`): with a large
    vocabulary that is most of the cost. Padding never changes a value (tested to 1e-4).
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    feats = [data_mod.encode(tok, p, t, max_length) for p, t in zip(prompts, targets)]
    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
    collate = data_mod.Collator(tok.pad_token_id, "left")
    nll = [math.nan] * len(feats)
    ntok = [0] * len(feats)
    bar = tqdm(total=len(feats), desc=desc, unit="ex", disable=not progress, dynamic_ncols=True)
    i, bs = 0, batch_size
    while i < len(order):
        idx = order[i:i + bs]
        batch = {k: v.to(device) for k, v in collate([feats[j] for j in idx]).items()}
        labels = batch["labels"]
        n_target = int((labels != -100).sum(-1).max())
        keep = min(n_target + 1, labels.shape[1])
        pos = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        try:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=pos, logits_to_keep=keep).logits
        except Exception as e:
            if _is_oom(e) and bs > 1:
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
                continue
            raise
        logits = logits[:, -keep:]  # models without logits_to_keep return every position
        lab = labels[:, -keep + 1:] if keep > 1 else labels[:, :0]
        lg = logits[:, :-1].float()
        mask = lab != -100
        # log p(label) = logit[label] - logsumexp(logits): no second vocabulary-sized tensor
        tok_lp = (lg.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1)) * mask
        sums = -tok_lp.sum(-1)
        counts = mask.sum(-1)
        for k, j in enumerate(idx):
            c = int(counts[k])
            ntok[j] = c
            nll[j] = float(sums[k]) / c if c else math.nan
        i += len(idx)
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return nll, ntok


def perplexities(model, tok, prompts, targets, **kw):
    nll, ntok = target_nll(model, tok, prompts, targets, **kw)
    return [ppl_from_nll(x) for x in nll], ntok


def ppl_from_nll(x: float) -> float:
    """exp(mean NLL); inf past exp's range (about 709: a target the model finds all but impossible)."""
    if x != x:
        return math.nan
    return math.exp(x) if x < 709 else math.inf


def greedy_with_likelihood(model, tok, prompts, max_new_tokens=512, batch_size=None, progress=True, **kw):
    """Greedy completion per prompt and its likelihood: exp(mean log-prob of the generated tokens up to
    and including the stop string), scored teacher-forced on the decoded text (the ATC score)."""
    outs, _ = sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, progress=progress, desc="greedy", **kw)
    texts = [o[0] for o in outs]
    nll, ntok = target_nll(model, tok, prompts, [t + STOP for t in texts], batch_size=batch_size or 16,
                           progress=progress, desc="greedy score", max_length=kw.get("max_length"))
    return texts, [math.exp(-x) if x == x else math.nan for x in nll], ntok
