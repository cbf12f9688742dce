"""The kit's decode loop (models/decoding.py) against Hugging Face's generate and logits warpers, the merged
LoRA path against the unmerged one, and the cached dequantized GGUF copy against the GGUF file itself."""
import pytest
import torch

from conftest import tiny_cfg
from premem_kit.core.config import DataSettings
from premem_kit.models import decoding, inference
from premem_kit.tasks import data


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module")
def prompts():
    from conftest import DEMO_DATA

    return [e["prompt"] for e in data.load_split(DataSettings(data=str(DEMO_DATA)), "train")[:9]]


def hf_probs(logits, temperature, top_k, top_p):
    """The sampling distribution of model.generate(do_sample=True, ...), from its own logits warpers."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    return torch.softmax(procs(None, logits.clone()), -1)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (0, 0.999), (0, 1.0), (20, 0.9)])
def test_draws_follow_generates_distribution(top_k, top_p):
    """Rows whose nucleus lies inside the 512 candidates (peaked) and rows that need the whole vocabulary
    (flat): the draws never leave Hugging Face's support and their frequencies match its probabilities."""
    g = torch.Generator().manual_seed(0)
    vocab = 2000
    logits = torch.stack([torch.randn(vocab, generator=g) * 4, torch.randn(vocab, generator=g) * 0.3,
                          torch.randn(vocab, generator=g) * 2])
    want = hf_probs(logits, 0.8, top_k, top_p)
    draws = 30000
    got = decoding.next_tokens(logits.repeat_interleave(draws, 0), 0.8, top_k, top_p,
                               torch.Generator().manual_seed(1)).view(3, draws)
    for row in range(3):
        freq = torch.bincount(got[row], minlength=vocab).double() / draws
        assert (want[row][got[row]] > 0).all(), "a token outside top-k/top-p was drawn"
        assert 0.5 * (freq - want[row].double()).abs().sum() < 0.05 + 0.5 * (want[row] > 0).sum() / draws ** 0.5


def test_greedy_loop_equals_generate_with_refills(tiny, prompts):
    """Greedy completions are the same with the loop as with model.generate, whatever the batch: room for
    one prompt at a time, for some (rows leave and new prompts join the running batch), for all."""
    tok, model = tiny
    want, _ = inference.sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=20, batch_size=9,
                               sampler="generate", progress=False)
    for bs in (1, 2, 4, 9):
        got, _ = inference.sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=20, batch_size=bs,
                                  progress=False)
        assert got == want, bs


def test_sampled_batch_reproduces_with_its_seed(tiny, prompts):
    tok, model = tiny
    kw = dict(n=4, max_new_tokens=16, batch_size=2, progress=False)
    a, na = inference.sample(model, tok, prompts, seed=3, **kw)
    b, nb = inference.sample(model, tok, prompts, seed=3, **kw)
    c, _ = inference.sample(model, tok, prompts, seed=4, **kw)
    assert a == b and na == nb and a != c
    assert all(len(x) == 4 for x in a) and len({s for x in a for s in x}) > len(prompts)  # samples differ


def test_stop_string_ends_a_sequence_where_generate_does(tiny, prompts):
    """A stop string taken from the middle of a greedy completion: both samplers end there, and the
    completion is cut before it."""
    tok, model = tiny
    free, n_free = inference.sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=30, stop=None,
                                    progress=False)
    stop = free[0][0][12:15]
    a, na = inference.sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=30, stop=stop, progress=False)
    b, _ = inference.sample(model, tok, prompts, n=1, greedy=True, max_new_tokens=30, stop=stop, batch_size=9,
                            sampler="generate", progress=False)
    assert a == b
    assert a[0][0] == free[0][0][:free[0][0].find(stop)] and na < n_free
    assert all(stop not in x[0] for x in a)


def test_merged_lora_gives_the_unmerged_perplexities_and_completions(tmp_path, tiny_model, prompts):
    """A trained two-checkpoint run evaluated through CheckpointLoader (adapters merged one after the other)
    gives the perplexities and greedy completions of each adapter loaded fresh and unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from premem_kit.core import runs
    from premem_kit.core.parallel import dist_state
    from premem_kit.evaluation.evaluation import CheckpointLoader
    from premem_kit.training import trainer as training

    cfg = tiny_cfg(tiny_model, tmp_path / "run", learning_rate=1e-2, lora_dropout=0.0)
    training.run_training(cfg)
    exs = data.run_train_examples(tmp_path / "run", cfg)[:6]
    P, T = [e["prompt"] for e in exs], [e["target"] for e in exs]
    loader = CheckpointLoader(cfg, dist_state())
    seen = []
    for step, _, folder in runs.checkpoints(tmp_path / "run"):
        model, tok = loader.load(step, folder)
        assert loader.merged
        merged, _ = inference.perplexities(model, tok, P, T, progress=False)
        greedy, _ = inference.sample(model, tok, P, n=1, greedy=True, max_new_tokens=12, progress=False)
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(folder)).eval()
        want, _ = inference.perplexities(plain, tok, P, T, progress=False)
        assert all(abs(a - b) / b < 1e-4 for a, b in zip(merged, want))
        assert greedy == inference.sample(plain, tok, P, n=1, greedy=True, max_new_tokens=12, progress=False)[0]
        seen.append(merged)
    assert len(seen) == 2 and seen[0] != seen[1]  # the adapters differ, and each was applied


def test_cached_gguf_copy_equals_the_gguf_file():
    """The real SmolLM2-135M: the per-machine dequantized copy gives the GGUF file's perplexities (1e-4),
    and the loop's greedy completions equal generate's."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from premem_kit.core.config import Config
    from premem_kit.models import loading

    cfg = Config(model="pypi:smollm2-135m-instruct", quantization="none")
    folder, gguf = loading.resolve_source(cfg.model)
    cached = loading.load_base_model(cfg).eval()  # makes the copy if this machine has none
    assert loading.copy_path(folder, gguf).is_dir()
    plain = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    tok = loading.load_tokenizer(cfg.model)
    P = ["Tom has 2 apples and buys 3 more. How many apples?\nAnswer:", "What is 7 times 6?\nAnswer:"]
    T = [" 2 + 3 = 5\n#### 5\nDone.", " 7 * 6 = 42\n#### 42\nDone."]
    a, _ = inference.perplexities(cached, tok, P, T, progress=False)
    b, _ = inference.perplexities(plain, tok, P, T, progress=False)
    assert all(abs(x - y) / y < 1e-4 for x, y in zip(a, b)) and all(1 < x < 100 for x in a)
    loop, _ = inference.sample(cached, tok, P, n=1, greedy=True, max_new_tokens=24, progress=False)
    gen, _ = inference.sample(plain, tok, P, n=1, greedy=True, max_new_tokens=24, sampler="generate",
                              progress=False)
    assert loop == gen
