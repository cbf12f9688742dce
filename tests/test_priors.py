"""premem.py priors (premem_kit/analysis/priors.py, prior_metrics.py): distance from initialization against merged
weights, gradient variance, the ATC threshold fit, the per-checkpoint cache and Figure 5, on the tiny model."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_cfg, write_synthetic_run

import premem
from premem_kit.core import config
from premem_kit.tasks import data
from premem_kit.core import figures
from premem_kit import metric
from premem_kit.models import loading as models
from premem_kit.analysis import prior_metrics
from premem_kit.analysis import priors
from premem_kit.core import records
from premem_kit.core import runs


def _randomize_lora(model, seed, scale=0.05):
    """A trained-looking adapter: PEFT initializes B = 0, so give A and B random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _save_adapter(cfg, folder, seed):
    model = models.add_lora(models.load_base_model(cfg), cfg)
    _randomize_lora(model, seed)
    model.save_pretrained(folder)
    return folder


def _merged_sq_diff(cfg, ckpt):
    base = {k: v.clone() for k, v in models.load_base_model(cfg).state_dict().items()}
    merged = models.load_checkpoint(cfg, ckpt).merge_and_unload().state_dict()
    assert set(merged) == set(base)
    return sum(float(((merged[k].double() - base[k].double()) ** 2).sum()) for k in base)


@pytest.fixture(scope="module")
def cfg(tiny_model, tmp_path_factory):
    return tiny_cfg(tiny_model, tmp_path_factory.mktemp("run") / "run", lora_r=4, lora_alpha=8)


def test_lora_distance_equals_merged_weight_difference(cfg, tmp_path):
    ckpt = _save_adapter(cfg, tmp_path / "ckpt", seed=1)
    expected = _merged_sq_diff(cfg, ckpt)
    assert expected > 1e-3
    assert prior_metrics.lora_distance(ckpt) == pytest.approx(expected, rel=1e-5)
    # rsLoRA scales by alpha / sqrt(r): a 4x larger squared change at r = 4, PEFT's merge agrees
    acfg = json.loads((ckpt / "adapter_config.json").read_text())
    acfg["use_rslora"] = True
    (ckpt / "adapter_config.json").write_text(json.dumps(acfg))
    rs = _merged_sq_diff(cfg, ckpt)
    assert rs == pytest.approx(4 * expected, rel=1e-5)
    assert prior_metrics.lora_distance(ckpt) == pytest.approx(rs, rel=1e-5)
    # the full-finetuning path (lora_r = 0) on the same merged weights
    merged = models.load_checkpoint(cfg, ckpt).merge_and_unload()
    base = models.load_base_model(cfg)
    assert prior_metrics.full_distance(merged, base) == pytest.approx(rs, rel=1e-5)
    # the authors' distance (gsm8k_eval_weight_norm.py) leaves out the input embedding and the output layer:
    # a change there counts only with exclude_embeddings=False (the kit's earlier sum over every weight)
    emb = merged.get_input_embeddings().weight
    with torch.no_grad():
        emb[0] += 1.0
    assert prior_metrics.full_distance(merged, base) == pytest.approx(rs, rel=1e-5)
    assert prior_metrics.full_distance(merged, base, exclude_embeddings=False) == pytest.approx(rs + emb.shape[1], rel=1e-5)


def test_lora_distance_leaves_out_embedding_and_output_adapters(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {f"base_model.model.{m}.lora_{ab}.weight": torch.randn(shape, generator=g)
          for m in ("model.layers.0.self_attn.q_proj", "lm_head") for ab, shape in (("A", (2, 8)), ("B", (8, 2)))}
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 4, "r": 2}))

    def sq(m):  # ||s B A||^2 with s = alpha / r = 2
        a, b = sd[f"base_model.model.{m}.lora_A.weight"], sd[f"base_model.model.{m}.lora_B.weight"]
        return float(((2 * b @ a).double() ** 2).sum())

    q, head = sq("model.layers.0.self_attn.q_proj"), sq("lm_head")
    assert prior_metrics.lora_distance(tmp_path) == pytest.approx(q, rel=1e-6)
    assert prior_metrics.lora_distance(tmp_path, exclude_embeddings=False) == pytest.approx(q + head, rel=1e-6)


def test_lora_distance_rejects_a_folder_without_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        prior_metrics.lora_distance(tmp_path)


@pytest.fixture(scope="module")
def lora_model(cfg):
    tok = models.load_tokenizer(cfg.model)
    model = models.add_lora(models.load_base_model(cfg), cfg)
    _randomize_lora(model, seed=3)
    return tok, model, data.train_examples(cfg)


def test_gradient_variance_of_identical_minibatches_is_zero(lora_model, cfg):
    tok, model, exs = lora_model
    model.train()  # lora_dropout = 0.1: gradient_variance must switch it off
    assert prior_metrics.gradient_variance(model, tok, [exs[:3]] * 5, cfg.max_length, micro_batch_size=2) == 0.0
    assert model.training  # mode restored


def test_gradient_variance_equals_direct_computation(lora_model, cfg):
    """The kit's earlier rule (--grad-draw random --grad-loss token): seeded draws, the token-weighted loss."""
    tok, model, exs = lora_model
    batches = prior_metrics.minibatches(exs, 5, 3, seed=0, draw="random")
    assert len({tuple(e["id"] for e in b) for b in batches}) == 5
    got = prior_metrics.gradient_variance(model, tok, batches, cfg.max_length, micro_batch_size=2, loss="token")
    # direct: one HF forward per whole minibatch (its mean token loss), all 5 gradients stacked
    model.eval()
    coll = data.Collator(tok.pad_token_id)
    flat = []
    for b in batches:
        model.zero_grad()
        enc = coll([data.encode(tok, e["prompt"], e["target"], cfg.max_length) for e in b])
        model(**enc).loss.backward()
        flat.append(torch.cat([p.grad.flatten().double() for p in model.parameters() if p.requires_grad]))
    model.zero_grad()
    expected = float(torch.stack(flat).var(dim=0, unbiased=False).mean())
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-4)


def test_gradient_variance_as_the_authors_first_examples_per_example_loss(lora_model, cfg):
    """gsm8k_eval_grad_var.py: the first 5 x B train examples in order, batch size 1 with each example's mean
    token loss divided by B and accumulated: the gradient of the mean of per-example mean losses."""
    tok, model, exs = lora_model
    batches = prior_metrics.minibatches(exs, 5, 3)  # draw "first"
    assert [[e["id"] for e in b] for b in batches] == [[e["id"] for e in exs[3 * k:3 * k + 3]] for k in range(5)]
    got = prior_metrics.gradient_variance(model, tok, batches, cfg.max_length, micro_batch_size=2)
    model.eval()
    coll = data.Collator(tok.pad_token_id)
    flat = []
    for b in batches:
        model.zero_grad()
        for e in b:  # one HF forward per example, its mean token loss / B, accumulated (as the authors)
            (model(**coll([data.encode(tok, e["prompt"], e["target"], cfg.max_length)])).loss / len(b)).backward()
        flat.append(torch.cat([p.grad.flatten().double() for p in model.parameters() if p.requires_grad]))
    model.zero_grad()
    expected = float(torch.stack(flat).var(dim=0, unbiased=False).mean())
    token = prior_metrics.gradient_variance(model, tok, batches, cfg.max_length, micro_batch_size=2, loss="token")
    assert got == pytest.approx(expected, rel=1e-4) and abs(token - expected) > 1e-3 * expected
    # fewer examples than 5 x B: the order wraps around
    assert [e["id"] for e in prior_metrics.minibatches(exs[:4], 2, 3)[1]] == [exs[3]["id"], exs[0]["id"], exs[1]["id"]]


def test_atc_threshold_reproduces_reference_accuracy():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    for acc in (0.0, 0.005, 0.37, 0.5, 0.995, 1.0):
        t = prior_metrics.atc_fit_threshold(scores, acc)
        assert prior_metrics.atc_predict(scores, t) == pytest.approx(acc)
    t = prior_metrics.atc_fit_threshold(scores, 0.37)
    other = rng.random(1000) * 1.2
    assert prior_metrics.atc_predict(other, t) == pytest.approx(float((other > t).mean()))
    assert np.quantile(scores, 0.63) == pytest.approx(t, abs=0.02)
    # an accuracy between two achievable fractions rounds to the nearest one
    t = prior_metrics.atc_fit_threshold([0.1, 0.2, 0.3], 0.6)
    assert prior_metrics.atc_predict([0.1, 0.2, 0.3], t) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="accuracy"):
        prior_metrics.atc_fit_threshold(scores, 1.5)


def _greedy_run(folder, cfg, test_acc, train_greedy, test_greedy=None):
    """A run folder with train/test records at steps 2 and 4 and greedy records [(likelihood, tokens)]."""
    write_synthetic_run(folder, [2, 4], [[1, 0, 1, 0]] * 2, [[3.0] * 4] * 2, test_acc, epochs=[1.5, 3.0],
                        config=cfg, n_test=4)
    for k, step in enumerate((2, 4)):
        for split, rows in (("train", train_greedy[k]), ("test", test_greedy[k] if test_greedy else None)):
            if rows is not None:
                records.write_greedy(runs.greedy_path(folder, step, split), [
                    {"id": f"gsm8k/{split}/{i}", "step": step, "split": split, "text": "t", "answer": "1",
                     "outcome": "correct", "likelihood": lik, "tokens": n} for i, (lik, n) in enumerate(rows)])
    return folder


def test_atc_fits_on_the_reference_runs_train_scores(tmp_path, capsys):
    """gsm8k_orig_line_baselines.ipynb: threshold = np.percentile(exp(cumulative log-prob of the reference run's
    train greedy answers), 100 (1 - its test accuracy)), the reference being the 3-epoch, full, lr 2e-5 run;
    every run's prediction is its train answers' fraction above. Hand-made: the whole-sequence and the per-token
    orders differ, so the old and new defaults give different numbers."""
    from premem_kit.analysis.rundata import load_run

    ref_train = [(0.9, 20), (0.6, 2), (0.8, 10), (0.5, 1)]  # log-probs -2.11, -1.02, -2.23, -0.69
    other_train = [(0.95, 2), (0.3, 4), (0.7, 1), (0.99, 30)]  # -0.10, -4.82, -0.36, -0.30
    test_greedy = [(0.1, 5), (0.2, 5), (0.3, 5), (0.4, 5)]
    other = _greedy_run(tmp_path / "other", {"learning_rate": 1e-3}, [0.1, 0.3], [other_train] * 2)
    ref = _greedy_run(tmp_path / "ref", {"learning_rate": 2e-5}, [0.2, 0.5], [ref_train] * 2, [test_greedy] * 2)
    rs = [load_run(other), load_run(ref)]
    assert priors.pick_run(rs, None).name == "ref"  # not the first run given: the authors' reference
    atc = priors.fit_atc(rs[1])
    assert (atc["fit_on"], atc["score"], atc["reference_step"], atc["reference_is_authors"]) == ("train", "sequence", 4, True)
    assert atc["threshold"] == pytest.approx((2 * np.log(0.6) + 20 * np.log(0.9)) / 2)
    assert atc["reference_fraction_above"] == 0.5 and atc["n_fit"] == 4
    cached = {r.name: {2: {"grad_variance": 1.0, "distance_from_init": 1.0},
                       4: {"grad_variance": 1.0, "distance_from_init": 1.0}} for r in rs}
    pts = priors.priors_table(rs, -2.3, atc, cached)
    # the authors' computation gives the same predictions
    seq = lambda rows: np.array([n * np.log(lik) for lik, n in rows])  # noqa: E731
    thr = np.percentile(np.exp(seq(ref_train)), (1 - 0.5) * 100)
    assert (np.exp(seq(other_train)) > thr).mean() == 0.75
    np.testing.assert_allclose(pts["atc_pred_test_acc"], [0.75, 0.75, 0.5, 0.5])
    # the kit's earlier fit (--atc-fit-on test --atc-score token-mean): the reference's test likelihoods
    old = priors.fit_atc(rs[1], fit_on="test", score="token-mean")
    assert old["threshold"] == pytest.approx(0.25) and old["fit_on"] == "test"
    np.testing.assert_allclose(priors.priors_table(rs, -2.3, old, cached)["atc_pred_test_acc"], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(priors.PriorsError, match=r"greedy/step-XXXXXX\.test\.parquet"):
        priors.fit_atc(rs[0], fit_on="test")
    # a LoRA run's reference is at 10x (the kit's QLoRA rule); none there: the first run, with a warning
    lora = _greedy_run(tmp_path / "lora", {"learning_rate": 2e-4, "lora_r": 16}, [0.2, 0.5], [ref_train] * 2)
    assert priors.pick_run([rs[0], load_run(lora)], None).name == "lora"
    assert priors.pick_run([rs[0]], None).name == "other"
    assert "the authors' reference; fitting on the first run, other" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the command on tiny runs


def make_tiny_run(cfg, folder, lr, train_acc, test_acc, train_lik, test_lik, seed):
    """A run folder (conftest.write_synthetic_run) with 2 real LoRA checkpoints of the tiny model at steps 2
    and 4, train records of perplexity 3, test records with mean accuracy mean(test_acc[k]) and greedy
    records with the given likelihoods."""
    rc = config.updated(cfg, "test", run_dir=str(folder), learning_rate=lr)
    train_ids = [e["id"] for e in data.train_examples(rc)][: len(train_lik[0])]
    test_ids = [f"gsm8k/test/{k}" for k in range(len(test_lik[0]))]
    write_synthetic_run(folder, [2, 4], train_acc, np.full((2, len(train_ids)), 3.0),
                        [float(np.mean(a)) for a in test_acc], epochs=[1.0, 2.0], config=rc, ids=train_ids,
                        n_test=len(test_ids), complete_checkpoints=True)
    for k, step in enumerate((2, 4)):
        _save_adapter(rc, runs.checkpoint_dir(folder, step), seed=seed + k)
        for split, lik, ii in (("train", train_lik[k], train_ids), ("test", test_lik[k], test_ids)):
            records.write_greedy(runs.greedy_path(folder, step, split), [
                {"id": i, "step": step, "split": split, "text": "t", "answer": "1", "outcome": "correct",
                 "likelihood": float(x), "tokens": 5} for i, x in zip(ii, lik)])
    return folder


def check_fig5(points: pd.DataFrame, corr: dict) -> None:
    """Figure 5 as drawn: a panel per metric, a line per run through its checkpoints, y = x on the two
    predicted-gap panels only, Pearson r and n in each title."""
    fig = priors.fig5(points, corr)
    try:
        assert len(fig.axes) == len(priors.METRICS) == 4
        for ax, (col, title) in zip(fig.axes, priors.METRICS):
            r = corr[col]["pearson_r"]
            assert ax.get_title() == f"{title}\nPearson r = {'n/a' if r is None else f'{r:.3f}'} (n=4)"
            lines = {ln.get_label(): ln for ln in ax.get_lines()}
            assert set(lines) == ({"a", "b", "y = x"} if col in ("atc_gap", "premem_gap") else {"a", "b"})
            for name in ("a", "b"):
                g = points[points["run"] == name]
                np.testing.assert_allclose(lines[name].get_xdata(), g[col])
                np.testing.assert_allclose(lines[name].get_ydata(), g["gap"])
        assert fig.axes[0].get_ylabel() == "generalization gap (train acc - test acc)"
        assert [ax.get_xlabel() for ax in fig.axes] == ["gradient variance", "distance from initialization",
                                                        "predicted gap (ATC)", "predicted gap (PreMemAcc)"]
    finally:
        figures.pyplot().close(fig)


def test_priors_command_writes_fig5_table_and_caches(cfg, tmp_path, capsys):
    # neither run is the authors' reference (3 epochs, full, lr 2e-5): the first, a, fits ATC. Its test acc
    # 0.5 at its last checkpoint and its train greedy likelihoods 0.3, 0.5, 0.7, 0.9 (5 tokens each) put the
    # threshold between 5 log 0.7 and 5 log 0.5
    a = make_tiny_run(cfg, tmp_path / "a", 1e-3, [[0, 1, 1, 0], [1, 1, 1, 0]], [[0] * 8, [1] * 4 + [0] * 4],
                      [[0.2, 0.5, 0.6, 0.9], [0.3, 0.5, 0.7, 0.9]], [[0.1] * 8, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]],
                      seed=10)
    b = make_tiny_run(cfg, tmp_path / "b", 1e-4, [[0, 0, 1, 0], [1, 0, 1, 0]], [[0] * 8, [1] + [0] * 7],
                      [[0.1, 0.2, 0.3, 0.46], [0.4, 0.44, 0.5, 0.99]], [[0.5] * 8, [0.5] * 8], seed=20)
    out = tmp_path / "out"
    argv = ["priors", str(a), str(b), "--out", str(out), "--threshold-ppl", "1.5", "--grad-batch-size", "2"]
    assert premem.main(argv) == 0
    res = json.loads((out / "priors.json").read_text())
    assert res["atc"]["reference_run"] == "a" and res["atc"]["reference_step"] == 4
    assert res["atc"]["threshold"] == pytest.approx(5 * (np.log(0.7) + np.log(0.5)) / 2)
    assert res["atc"]["reference_fraction_above"] == pytest.approx(0.5) and res["atc"]["fit_on"] == "train"
    assert res["threshold_source"] == "given" and res["distance_from_init"] == "without the embedding and output layers"
    assert res["gradient_variance"]["draw"] == "first" and res["gradient_variance"]["loss"] == "example"
    pts = pd.read_csv(out / "priors.csv")
    assert list(zip(pts["run"], pts["step"])) == [("a", 2), ("a", 4), ("b", 2), ("b", 4)]
    np.testing.assert_allclose(pts["train_acc"], [0.5, 0.75, 0.25, 0.5])
    np.testing.assert_allclose(pts["test_acc"], [0.0, 0.5, 0.0, 0.125])
    np.testing.assert_allclose(pts["gap"], [0.5, 0.25, 0.25, 0.375])
    np.testing.assert_allclose(pts["atc_pred_test_acc"], [0.5, 0.5, 0.0, 0.25])  # train likelihoods > sqrt(0.35)
    np.testing.assert_allclose(pts["atc_gap"], pts["train_acc"] - pts["atc_pred_test_acc"])
    # perplexity 3 > 1.5 everywhere: nothing memorized, PreMemAcc = train accuracy at each checkpoint
    np.testing.assert_allclose(pts["premem_gap"], 0.0)
    for run, step, seed in (("a", 2, 10), ("a", 4, 11), ("b", 2, 20), ("b", 4, 21)):
        ck = tmp_path / run / f"checkpoint-{step}"
        d = pts.loc[(pts["run"] == run) & (pts["step"] == step), "distance_from_init"].item()
        assert d == pytest.approx(prior_metrics.lora_distance(ck)) and d > 0
    assert (pts["grad_variance"] > 0).all()
    # the second checkpoint's value (its adapter loaded after the first one was unloaded) equals a fresh
    # computation on that adapter alone, over the same seeded minibatches
    from peft import PeftModel

    rc = runs.read_config(a)
    fresh = PeftModel.from_pretrained(models.load_base_model(rc), str(a / "checkpoint-4"), is_trainable=True)
    exs = prior_metrics.in_split_order(rc, data.train_examples(rc))  # the split's order, as the authors read it
    assert [int(e["id"].rsplit("/", 1)[1]) for e in exs] == sorted(int(e["id"].rsplit("/", 1)[1]) for e in exs)
    batches = prior_metrics.minibatches(exs, 5, 2)  # the first 10 examples, in order
    want = prior_metrics.gradient_variance(fresh, models.load_tokenizer(rc.model), batches, rc.max_length, 2)
    assert pts.loc[1, "grad_variance"] == pytest.approx(want, rel=1e-6)
    r = res["pearson_r_vs_gap"]
    assert r["distance_from_init"]["pearson_r"] == pytest.approx(metric.pearson_r(pts["gap"], pts["distance_from_init"]))
    assert r["atc_gap"]["n"] == 4
    assert res["files"] == ["priors.json", "priors.csv", "figures/fig5.png", "figures/fig5.pdf"]
    assert all((out / f).is_file() for f in res["files"])
    check_fig5(pts, r)
    # cache: a rerun reads RUN/priors/step-*.json and recomputes nothing; --force recomputes
    cache = sorted((tmp_path / "a" / "priors").glob("step-*.json"))
    assert [c.name for c in cache] == ["step-000002.json", "step-000004.json"]
    stamp = [c.stat().st_mtime_ns for c in cache]
    assert premem.main(argv) == 0
    assert [c.stat().st_mtime_ns for c in cache] == stamp
    assert json.loads((out / "priors.json").read_text())["points"] == res["points"]
    # --no-grad-variance reuses the cached distance whatever the settings and leaves the files alone
    assert premem.main(argv[:-1] + ["3", "--no-figures", "--no-grad-variance"]) == 0
    assert [c.stat().st_mtime_ns for c in cache] == stamp
    res2 = json.loads((out / "priors.json").read_text())
    assert [p["distance_from_init"] for p in res2["points"]] == [p["distance_from_init"] for p in res["points"]]
    assert all(p["grad_variance"] is None for p in res2["points"])
    # --force recomputes; other settings invalidate the cache
    assert premem.main(argv + ["--no-figures", "--no-grad-variance", "--force"]) == 0
    assert all(c.stat().st_mtime_ns != s for c, s in zip(cache, stamp))
    assert json.loads(cache[0].read_text())["settings"]["grad_variance"] is False
    assert premem.main(argv + ["--no-figures"]) == 0
    res3 = json.loads((out / "priors.json").read_text())
    assert [p["grad_variance"] for p in res3["points"]] == [p["grad_variance"] for p in res["points"]]


def test_priors_errors_name_the_missing_files(cfg, tmp_path, capsys):
    a = make_tiny_run(cfg, tmp_path / "a", 1e-3, [[0, 1], [1, 1]], [[0, 1], [1, 1]], [[0.2, 0.5], [0.3, 0.5]],
                      [[0.1, 0.2], [0.3, 0.4]], seed=1)
    for p in runs.list_greedy(a):
        if p.name.endswith(".train.parquet"):
            p.unlink()
    argv = ["priors", str(a), "--out", str(tmp_path / "o"), "--threshold", "-2", "--no-grad-variance"]
    assert premem.main(argv + ["--atc-reference", "zzz"]) == 2
    assert "--atc-reference 'zzz' is none of the runs given: a" in capsys.readouterr().err
    assert premem.main(argv + ["--atc-reference", str(a)]) == 2
    err = capsys.readouterr().err
    assert "greedy/step-XXXXXX.train.parquet" in err and "evaluate.py" in err and "--eval_splits train --greedy" in err
    # without an explicit reference, ATC is left out with a warning and the rest is written
    assert premem.main(argv) == 0
    assert "ATC left out" in capsys.readouterr().err
    res = json.loads((tmp_path / "o" / "priors.json").read_text())
    assert res["atc"] is None and res["points"][0]["grad_variance"] is None
    shutil.rmtree(a / "checkpoint-2")
    shutil.rmtree(a / "checkpoint-4")
    shutil.rmtree(a / "priors")
    assert premem.main(argv) == 2
    assert "no checkpoint has a checkpoint folder" in capsys.readouterr().err
