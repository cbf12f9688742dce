"""The one place where the GPU benchmark (bench_gpu.py, gpu_measure.py, gpu_smoke.sh) touches premem_kit.

Everything else in bench/ works on plain dicts and calls these functions, so a change of the kit's module
layout or of its config type is ported here alone:
  - `recipe(path, **overrides)`: a recipe YAML through the kit's own loader (defaults, checks), as a dict;
  - `kit_cfg(d)`: that dict turned back into what the kit's functions take (today the dict itself; if
    load_config returns a dataclass, the same dataclass type rebuilt from the dict);
  - the kit functions the benchmark times: load_tokenizer, load_base_model, add_lora, sample, target_nll,
    build_trainer.
Module paths: the package's subpackages (premem_kit.core.config, .models.loading, .models.inference,
.training.trainer), else the flat modules of earlier versions.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PATHS = {"config": ("premem_kit.core.config", "premem_kit.config"),
          "loading": ("premem_kit.models.loading", "premem_kit.models"),
          "inference": ("premem_kit.models.inference", "premem_kit.inference"),
          "training": ("premem_kit.training.trainer", "premem_kit.training")}
_TEMPLATE = {}  # the kit's config object of the last recipe read (its type is what kit_cfg rebuilds)


def _mod(key: str):
    new, old = _PATHS[key]
    try:
        return importlib.import_module(new)
    except ModuleNotFoundError as e:
        if e.name is None or not new.startswith(e.name):  # a missing dependency, not the layout
            raise
        return importlib.import_module(old)


def recipe(path, **overrides) -> dict:
    """A recipe YAML loaded by the kit (its defaults and checks), as a plain dict, with overrides."""
    cfg = _mod("config").load_config(Path(path) if Path(path).is_absolute() else ROOT / path)
    _TEMPLATE["cfg"] = cfg
    d = dict(cfg) if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    d.update(overrides)
    return d


def kit_cfg(d: dict):
    """The dict as the kit's functions take a config."""
    t = _TEMPLATE.get("cfg")
    if t is None or isinstance(t, dict):
        return dict(d)
    return dataclasses.replace(t, **d)


def load_tokenizer(folder: str):
    return _mod("loading").load_tokenizer(folder)


def load_base_model(cfg: dict):
    return _mod("loading").load_base_model(kit_cfg(cfg))


def add_lora(model, cfg: dict):
    return _mod("loading").add_lora(model, kit_cfg(cfg))


def sample(model, tok, prompts, **kw):
    return _mod("inference").sample(model, tok, prompts, **kw)


def target_nll(model, tok, prompts, targets, **kw):
    return _mod("inference").target_nll(model, tok, prompts, targets, **kw)


def build_trainer(cfg: dict, run, examples, tok, model):
    return _mod("training").build_trainer(kit_cfg(cfg), run, examples, tok, model)
