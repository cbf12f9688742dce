"""Algorithm 1 data curation (Kang et al., ICML 2025, section 6 / appendix C): `curate.py algo1` and
`curate.py collect`; fig8.py runs it once per strategy for Figure 8.

Choose P'(x), the train examples new data should resemble, from a trained run by one of four strategies
(selection.py); collect N' new examples derived from P'(x) with a collector (collectors.py); repeat for n
rounds. As the paper's line 6 (PreMemAcc on D_train), P'(x) is chosen among D_train, the seed examples of
round 0, never among the curated rows later rounds also train on (select_from "all": among both, the
kit's earlier rule). The premem memorization threshold is the task's in the authors' curation notebooks (GSM8K
-2.4, MATH -1.7) unless given.

OUT layout
----------
    OUT/algo1.json                 settings (a rerun with other settings is an error)
    OUT/round-K/train.jsonl        D_train + D'_train used in round K (provenance: source_id, round,
                                   strategy, collector, candidate_id); the seed rows keep their ids
    OUT/round-K/run/               the round's run folder (checkpoints, records; round 0 may be shared)
    OUT/round-K/selection.json     P'_{K+1}: chosen ids, their scores, eligible sources
    OUT/round-K/collected.jsonl    D'_{K+1}: the N'_{K+1} new examples
    OUT/round-K/done.json          round marker: test accuracy, sizes; a rerun skips done rounds
    OUT/curated.jsonl              every collected example (D'_train) with provenance
    OUT/summary.json               per round: n_train, test accuracy, selected, collected
Round K trains on D_train + D'_1..D'_K, evaluates (train records at every checkpoint for premem, test at
the last checkpoint), chooses P'_{K+1} and collects D'_{K+1}; the last round (K = rounds) only trains
and evaluates. Resumable at round granularity; inside a round training and evaluation resume themselves
and the rephrase cache avoids repeated requests.
"""
from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from premem_kit.curation import collectors
from premem_kit.core import runs
from premem_kit.core import config as config_mod
from premem_kit.core.config import Config
from premem_kit.tasks import data as data_mod
from premem_kit.curation.chat import ResponseCache
from premem_kit.curation.vocabulary import (COLLECTORS, DEFAULT_T, STRATEGIES, CurationError, source_of,
                                            task_mem_threshold, to_row)
from premem_kit.core.files import atomic_write_json, read_jsonl, write_jsonl
from premem_kit.curation.selection import (d_train, ifd_scores, load_ifd_scorer, premem_scores,
                                           resolve_mem_threshold, select_ids)

log = logging.getLogger("curation")


def round_config(base: Config, train_file: Path, run_dir: Path) -> Config:
    """The base recipe trained on exactly `train_file` (replace mode, no subset) in run_dir."""
    return config_mod.updated(base, f"Algorithm 1 round in {run_dir}", run_dir=str(run_dir),
                              train_file=str(train_file), train_file_mode="replace", subset="full",
                              subset_fraction=None, max_train_examples=None, eval_train_examples=None)


def default_train_fn(cfg: Config) -> dict:
    """Train (or resume, or skip a finished run) with training.run_training."""
    from premem_kit.training.trainer import run_training

    out = run_training(cfg)
    gc.collect()
    return out


def default_eval_fn(run: Path, train_records: bool) -> float:
    """Evaluate a round's run: train records at every checkpoint (premem), test at the last one."""
    from premem_kit.evaluation.evaluation import EvalOptions, evaluate_run

    ckpts = runs.complete_checkpoints(run)
    if not ckpts:
        raise CurationError(f"{run}: training wrote no checkpoint")
    last = runs.checkpoint_step(ckpts[-1])
    if train_records:
        evaluate_run(run, EvalOptions(settings={"eval_splits": ["train"], "eval_variants": ["original"]}))
    rows = evaluate_run(run, EvalOptions(settings={"eval_splits": ["test"], "eval_variants": ["original"],
                                                   "eval_base_model": False}, steps=[last]))
    gc.collect()
    return next(r["accuracy"] for r in rows if r["split"] == "test" and r["step"] == last)


def n_new_one(x, n_seed: int) -> int:
    """One N'_i: a count (500) or a multiple of the seed set's size ("2x": twice |D_train|)."""
    if isinstance(x, int):
        return x
    s = str(x).strip()
    try:
        if s.lower().endswith("x"):
            return round(float(s[:-1]) * n_seed)
        return int(s)
    except ValueError:
        raise CurationError(f"--n-new value {s!r}: expected a count like 500 or a multiple of the seed set "
                            "like 2x") from None


def n_new_list(n_new, rounds: int, n_seed: int) -> list[int]:
    """N'_1..N'_n from --n-new: one value for every round or one per round. Values are counts or multiples
    of the seed set ("1x 2x 4x 4x 2x": the authors' five-round MATH schedule, c_run1.sh; "1x 2x 4x 8x" doubles
    the data each round, their four-round one)."""
    vals = [n_new] if isinstance(n_new, (int, str)) else list(n_new)
    vals = [n_new_one(x, n_seed) for x in vals]
    if any(v < 0 for v in vals):
        raise CurationError(f"--n-new {vals}: counts must be >= 0")
    if len(vals) == 1:
        return vals * rounds
    if len(vals) != rounds:
        raise CurationError(f"--n-new has {len(vals)} values for {rounds} rounds")
    return vals


def check_inputs(strategy: str, collector: str, pool, chat, ifd_scorer) -> None:
    """Everything a strategy and a collector need, before anything trains."""
    if strategy not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if collector not in COLLECTORS:
        raise CurationError(f"unknown collector {collector!r}; expected one of {', '.join(COLLECTORS)}")
    if collector == "pool" and pool is None:
        raise CurationError("collector pool needs --pool (a JSONL file or 'holdout')")
    if collector == "rephrase" and chat is None:
        raise CurationError("collector rephrase needs an endpoint (--rephrase-model / --rephrase-hf)")
    if strategy == "ifd" and ifd_scorer is None:
        raise CurationError("strategy ifd needs an IFD scorer model")


# settings an OUT/algo1.json written before they existed was made with (the kit's earlier rule)
EARLIER_SETTINGS = {"select_from": "all"}


def claim_folder(out: Path, settings: dict) -> None:
    """Write OUT/algo1.json; a folder made with other settings is an error."""
    spath = out / "algo1.json"
    if spath.exists():
        old = {**EARLIER_SETTINGS, **json.loads(spath.read_text())}
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise CurationError(f"{spath}: this folder was made with other settings ("
                                + ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
                                + "); use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spath, settings)


@dataclass
class Algorithm1:
    """One Algorithm 1 run in `out`: its settings and the functions that train and evaluate a round.

    train_fn(cfg) trains a round's run; eval_fn(run, train_records) returns its test accuracy (and
    writes train records at every checkpoint when train_records is true: premem needs them)."""

    base_cfg: Config
    out: Path
    strategy: str
    n_list: list[int]               # N'_1..N'_n; the number of rounds is its length
    seed_examples: list[dict]       # D_train
    collector: str = "pool"
    pool: list[dict] | None = None
    pool_name: str = ""
    chat: object = None
    rephrase_cache: Path | None = None
    ifd_scorer: tuple | None = None  # (cfg, checkpoint) of the IFD scorer model
    round0_dir: Path | None = None   # a round-0 folder shared with other strategies (Figure 8)
    t: float = DEFAULT_T
    mem_threshold: float | None = None  # None: the task's (curation.MEM_THRESHOLDS)
    fraction: float | None = None
    select_from: str = "original"    # P'(x) among D_train (the seed examples) or "all" (+ curated rows)
    seed: int = 0
    train_fn: object = default_train_fn
    eval_fn: object = default_eval_fn
    _split: dict | None = field(default=None, init=False, repr=False)  # the train split by id, once loaded

    @property
    def rounds(self) -> int:
        return len(self.n_list)

    @property
    def task(self) -> str:
        return self.base_cfg.task

    @property
    def threshold(self) -> float:
        """The memorization threshold in use: the one given, or the task's."""
        return self.mem_threshold if self.mem_threshold is not None else task_mem_threshold(self.task)

    def settings(self) -> dict:
        return {"strategy": self.strategy, "collector": self.collector, "rounds": self.rounds,
                "n_new": self.n_list, "t": self.t, "mem_threshold": self.threshold,
                "fraction": self.fraction, "select_from": self.select_from, "seed": self.seed, "pool": self.pool_name,
                "chat": getattr(self.chat, "ident", None), "model": self.base_cfg.model, "task": self.task,
                "data": self.base_cfg.data}

    def run(self) -> dict:
        """Every round not yet done; returns summary.json's content."""
        claim_folder(self.out, self.settings())
        seed_rows = [to_row(e, self.task) for e in self.seed_examples]
        curated: list[dict] = []
        infos = []
        for k in range(self.rounds + 1):
            rdir = self.out / f"round-{k}"
            if (rdir / "done.json").exists():
                infos.append(json.loads((rdir / "done.json").read_text()))
                if k < self.rounds:
                    curated += read_jsonl(rdir / "collected.jsonl")
                log.info("round %d: done (%s), skipped", k, rdir / "done.json")
                continue
            infos.append(self.run_round(k, seed_rows, curated))
        write_jsonl(self.out / "curated.jsonl", curated)
        summary = {"settings": self.settings(), "rounds": infos, "curated": str(self.out / "curated.jsonl"),
                   "final_train_file": str(self.out / f"round-{self.rounds}" / "train.jsonl")}
        atomic_write_json(self.out / "summary.json", summary)
        return summary

    def run_round(self, k: int, seed_rows: list[dict], curated: list[dict]) -> dict:
        """Train and evaluate round k; before the last round also choose P' and collect (extends curated)."""
        rdir = self.out / f"round-{k}"
        tdir = Path(self.round0_dir) if (k == 0 and self.round0_dir is not None) else rdir
        train_file, run = tdir / "train.jsonl", tdir / "run"
        if not train_file.exists():
            write_jsonl(train_file, seed_rows + curated)
        cfg = round_config(self.base_cfg, train_file, run)
        log.info("round %d: training on %d examples (%d curated) in %s", k, len(seed_rows) + len(curated),
                 len(curated), run)
        t0 = time.time()
        self.train_fn(cfg)
        test_acc = self.eval_fn(run, self.strategy == "premem" and k < self.rounds)
        info = {"round": k, "run_dir": str(run), "n_train": len(seed_rows) + len(curated),
                "n_curated": len(curated), "test_accuracy": test_acc}
        if k < self.rounds:
            sel = self.choose(run)
            atomic_write_json(rdir / "selection.json", sel)
            new, st = self.collect(k, sel, curated)
            write_jsonl(rdir / "collected.jsonl", new)
            curated += new
            info.update(selected=len(sel["selected"]), eligible_sources=len(sel["sources"]), collected=len(new),
                        collect_stats=st)
        info["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(rdir / "done.json", info)
        log.info("round %d: test accuracy %.4f%s", k, test_acc,
                 f"; P' {info['selected']} examples, collected {info['collected']}" if k < self.rounds else "")
        return info

    def choose(self, run: Path) -> dict:
        """P' from the round's run by the strategy, among D_train (the seed examples) unless select_from
        is "all"."""
        exs = d_train(data_mod.run_train_examples(run), self.select_from, ids=[e["id"] for e in self.seed_examples])
        pm = premem_scores(run, self.threshold) if self.strategy == "premem" else None
        ifd = None
        if self.strategy == "ifd":
            scfg, ckpt = self.ifd_scorer
            ifd = ifd_scores(exs, scfg, ckpt, self.out / "ifd_scores.jsonl")
        sel = select_ids(self.strategy, exs, self.task, premem=pm, ifd=ifd, t=self.t, fraction=self.fraction)
        sel["select_from"] = self.select_from
        if self.strategy == "premem":
            sel["mem_threshold"] = self.threshold
        return sel

    def collect(self, k: int, sel: dict, curated: list[dict]) -> tuple[list[dict], dict]:
        """D'_{k+1}: N'_{k+1} new rows derived from P', never a candidate collected before."""
        rseed = self.seed * 1000 + k
        used = {r["candidate_id"] for r in curated}
        if self.collector == "pool":
            got, st = collectors.pool_collect(self.pool, sel["sources"], self.n_list[k], used, seed=rseed)
        else:
            split = self.train_split()
            cache = ResponseCache(self.rephrase_cache or self.out / "rephrase_cache.jsonl")
            got, st = collectors.rephrase_collect(self.chat, cache, [split[s] for s in sel["sources"] if s in split],
                                                  self.n_list[k], self.task, seed=rseed)
        new = []
        for r in got:
            row = {kk: v for kk, v in r.items() if kk not in ("id", "source_id", "request_key")}
            row.update(id=f"curated/{self.strategy}/r{k + 1}/{r['id']}", source_id=r["source_id"], round=k + 1,
                       strategy=self.strategy, collector=self.collector, candidate_id=r["id"])
            new.append(row)
        return new, st

    def train_split(self) -> dict:
        if self._split is None:
            self._split = {e["id"]: e for e in data_mod.load_split(self.base_cfg, "train")}
        return self._split


@dataclass
class Selection:
    """How P'(x) is chosen each round (Algorithm 1, line 6)."""

    t: float = DEFAULT_T                # premem: PreMemAcc cut
    mem_threshold: float | None = None  # loglog memorization threshold; None: the task's (GSM8K -2.4, MATH -1.7)
    fraction: float | None = None       # ifd / heuristic: the top fraction (None: the paper's per task)
    select_from: str = "original"       # P'(x) among D_train (the seed examples) or "all" (+ curated rows)


@dataclass
class Sources:
    """What Algorithm 1 trains on, collects from and trains with; Figure 8 shares one across strategies."""

    seed_examples: list[dict] | None = None  # D_train (None: data.train_examples(base_cfg))
    collector: str = "pool"
    pool: list[dict] | None = None   # candidate rows (collector pool)
    pool_name: str = ""
    chat: object = None              # the rephraser (collector rephrase)
    rephrase_cache: Path | None = None
    ifd_scorer: tuple | None = None  # (cfg, checkpoint) of the IFD scorer model
    round0_dir: Path | None = None   # a round-0 folder shared with other strategies (Figure 8)
    train_fn: object = default_train_fn
    eval_fn: object = default_eval_fn


def run_algorithm1(base_cfg: Config, out, strategy: str, rounds: int, n_new, sources: Sources | None = None,
                   selection: Selection | None = None, seed: int | None = None) -> dict:
    """Algorithm 1 (see the module docstring for OUT's layout). Returns summary.json's content.

    base_cfg: the training recipe (run_dir, train_file, subset keys are set per round); n_new: counts or
    multiples of the seed set per round ("2x")."""
    sources, selection = sources or Sources(), selection or Selection()
    check_inputs(strategy, sources.collector, sources.pool, sources.chat, sources.ifd_scorer)
    seed_examples = sources.seed_examples if sources.seed_examples is not None else data_mod.train_examples(base_cfg)
    shared = {k: v for k, v in vars(sources).items() if k != "seed_examples"}
    algo = Algorithm1(base_cfg, Path(out), strategy, n_new_list(n_new, rounds, len(seed_examples)), seed_examples,
                      **shared, **vars(selection), seed=base_cfg.seed if seed is None else seed)
    return algo.run()


# ----------------------------------------------------------------------------- the IFD scorer


def test_split_as_train_file(cfg: Config, path: Path, n: int | None = None) -> Path:
    """The test split (its first n examples) written as a train_file, for the IFD scorer, trained on data
    disjoint from the scored train examples. An existing file must hold the same examples."""
    exs = data_mod.load_split(cfg, "test")
    rows = [to_row(e, cfg.task) for e in (exs[:n] if n else exs)]
    if not path.exists():
        write_jsonl(path, rows)
    elif [r.get("id") for r in read_jsonl(path)] != [r["id"] for r in rows]:
        raise CurationError(f"{path}: holds other test examples than --ifd-scorer-examples {n} asks for; "
                            f"delete {path.parent} to train the IFD scorer again")
    return path


def ensure_ifd_scorer(base_cfg: Config, folder: Path, train_fn=default_train_fn, epochs: float = 2,
                      n: int | None = None) -> tuple[Config, Path]:
    """(config, last checkpoint) of the IFD scorer in folder/run: the recipe trained on the test split (its
    first n examples; disjoint from the scored train examples) for `epochs` epochs. A finished scorer is
    reused without calling train_fn."""
    from premem_kit.training.trainer import check_run_dir

    folder = Path(folder)
    tf = test_split_as_train_file(base_cfg, folder / "test_as_train.jsonl", n)
    cfg = config_mod.updated(round_config(base_cfg, tf, folder / "run"), "IFD scorer", num_epochs=epochs)
    run = check_run_dir(cfg)  # a folder trained with another recipe is an error, not reused
    if not (runs.summary_path(run).exists() and runs.complete_checkpoints(run)):
        train_fn(cfg)
    ckpts = runs.complete_checkpoints(run)
    if not ckpts:
        raise CurationError(f"{run}: IFD scorer training wrote no checkpoint")
    return cfg, ckpts[-1]


# ----------------------------------------------------------------------------- the commands


@dataclass
class LoopOptions:
    """The options `curate.py algo1` and `curate.py fig8` share."""

    n_new: list                     # --n-new: counts or multiples of the seed set ("2x")
    rounds: int = 5
    t: float = DEFAULT_T
    mem_threshold: float | None = None  # --mem-threshold; None: --threshold-from or the task's
    threshold_from: str | None = None   # --threshold-from: summary.json of premem.py analyze
    fraction: float | None = None
    select_from: str = "original"
    ifd_scorer: str | None = None   # an existing scorer run; None: train one in OUT/ifd-scorer
    ifd_scorer_examples: int | None = None
    collect: collectors.CollectOptions = field(default_factory=collectors.CollectOptions)

    def selection(self, task: str) -> Selection:
        """t, the memorization threshold (resolved for the task), fraction and select_from."""
        thr, source = resolve_mem_threshold(task, self.mem_threshold, self.threshold_from)
        log.info("memorization threshold %s (%s)", thr, source)
        return Selection(t=self.t, mem_threshold=thr, fraction=self.fraction, select_from=self.select_from)


def run_algo1(cfg: Config, out, strategy: str, opts: LoopOptions, train_fn=default_train_fn,
              eval_fn=default_eval_fn) -> dict:
    """`curate.py algo1`: Algorithm 1 from a recipe, with the IFD scorer trained first when needed."""
    seed_examples = data_mod.train_examples(cfg)
    n_list = n_new_list(opts.n_new, opts.rounds, len(seed_examples))  # a bad --n-new fails before training
    selection = opts.selection(cfg.task)  # so does a bad --threshold-from
    pool, pool_name = opts.collect.load_pool(cfg, [e["id"] for e in seed_examples])
    chat = opts.collect.chat()
    scorer = load_ifd_scorer(opts.ifd_scorer) if opts.ifd_scorer else None
    if strategy == "ifd" and scorer is None:
        scorer = ensure_ifd_scorer(cfg, Path(out) / "ifd-scorer", train_fn, n=opts.ifd_scorer_examples)
    sources = Sources(seed_examples=seed_examples, collector=opts.collect.collector, pool=pool, pool_name=pool_name,
                      chat=chat, ifd_scorer=scorer, train_fn=train_fn, eval_fn=eval_fn)
    return run_algorithm1(cfg, out, strategy, opts.rounds, n_list, sources, selection)


def collect_for_selection(selection, n: int, out, opts: collectors.CollectOptions, *, exclude=None,
                          cache=None, seed: int = 0) -> tuple[list[dict], dict]:
    """`curate.py collect`: N' new examples derived from a selection file (curate.py select), written to
    `out` as a train_file (dataset schema + provenance). Returns (rows, collector stats)."""
    p = Path(selection)
    if not p.exists():
        raise CurationError(f"--selection {p} does not exist (write it with curate.py select)")
    try:
        sel = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CurationError(f"--selection {p}: not valid JSON ({e}); write it with curate.py select") from None
    for k in ("sources", "run"):
        if not isinstance(sel, dict) or k not in sel:
            raise CurationError(f"{p}: not a selection file (no key {k!r})")
    run = Path(sel["run"])
    cfg = runs.read_config(run)
    exs = data_mod.run_train_examples(run, cfg)
    used = set()
    if exclude:
        if not Path(exclude).exists():
            raise CurationError(f"--exclude {exclude} does not exist")
        used = {str(r.get("candidate_id") or r.get("id")) for r in read_jsonl(exclude)}
    if opts.collector == "pool":
        pool, _ = opts.load_pool(cfg, [e["id"] for e in exs if source_of(e) == e["id"]])
        rows, st = collectors.pool_collect(pool, sel["sources"], n, used, seed=seed)
    else:
        split = {e["id"]: e for e in data_mod.load_split(cfg, "train")}
        rcache = ResponseCache(cache or Path(out).with_suffix(".cache.jsonl"))
        rows, st = collectors.rephrase_collect(opts.chat(), rcache, [split[s] for s in sel["sources"] if s in split],
                                               n, cfg.task, seed=seed)
    out_rows = [{**{k: v for k, v in r.items() if k not in ("id", "request_key")}, "id": f"curated/{r['id']}",
                 "candidate_id": r["id"], "strategy": sel.get("strategy"), "collector": opts.collector}
                for r in rows]
    write_jsonl(out, out_rows)
    data_mod.load_extra_file(out, cfg.task)  # a file train.py accepts
    return out_rows, st
