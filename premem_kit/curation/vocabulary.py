"""The vocabulary of Algorithm 1 data curation (Kang et al., ICML 2025, section 6 / appendix C), shared
by selection.py (choose P'(x)), collectors.py (collect N' new examples) and algorithm1.py (the rounds
and Figure 8): the strategy and collector names, their defaults, the error type, and the JSONL row an
example becomes. Imports nothing heavy: curate.py reads its option choices and defaults from here.
"""
from __future__ import annotations

from premem_kit.core.errors import KitError

STRATEGIES = ("premem", "iid", "ifd", "heuristic")
COLLECTORS = ("pool", "rephrase")
DEFAULT_T = 0.75              # premem: P'(x) = train examples with PreMemAcc below t
# premem: the memorization threshold on log(log(perplexity)) per task in curation, the authors' curation
# notebooks' values (reasoning_data): GSM8K -2.4 (gsm8k_calculate_unmemorized_acc.ipynb, gsm8k_data_fig.ipynb;
# their Figure 4 uses -2.3, metric.TASK_THRESHOLDS), MATH -1.7 (math_amrith.ipynb); --mem-threshold /
# --threshold-from replace it (--mem-threshold -2.3: the kit's earlier GSM8K default)
MEM_THRESHOLDS = {"gsm8k": -2.4, "math": -1.7}
TOP_FRACTION = {"gsm8k": 0.5, "math": 0.75}  # ifd / heuristic: the top fraction kept
# which train examples P'(x) is chosen from: "original" = D_train, the run's original train examples
# (Algorithm 1, line 6: PreMemAcc on D_train); "all" = D_train plus the curated rows trained on so far
SELECT_FROM = ("original", "all")
MEM_THRESHOLD_HELP = ("premem: memorization threshold on log(log(perplexity)) (default: the task's, "
                      + ", ".join(f"{k.upper()} {v}" for k, v in MEM_THRESHOLDS.items()) + ")")


class CurationError(KitError, ValueError):
    """Bad curation input; the message names the file, line or option."""


def task_mem_threshold(task: str) -> float:
    """The authors' curation memorization threshold (loglog) for a task: GSM8K -2.4, MATH -1.7."""
    if task not in MEM_THRESHOLDS:
        raise CurationError(f"no default memorization threshold for task {task!r}; give --mem-threshold")
    return MEM_THRESHOLDS[task]


def source_of(ex: dict) -> str:
    """The original train example an example derives from (itself for an original)."""
    return (ex.get("meta") or {}).get("source_id") or ex.get("source_id") or ex["id"]


def to_row(ex: dict, task: str, **prov) -> dict:
    """An example as a JSONL row in the dataset's schema (+ id and provenance) that train.py accepts."""
    if task == "gsm8k":
        row = {"id": ex["id"], "question": ex["question"], "answer": ex["solution"]}
    else:
        row = {"id": ex["id"], "problem": ex["question"], "solution": ex["solution"]}
        for k in ("level", "type"):
            if ex.get(k) is not None:
                row[k] = f"Level {ex[k]}" if k == "level" and isinstance(ex[k], int) else ex[k]
    meta = {k: v for k, v in (ex.get("meta") or {}).items() if k not in row}
    row.update(meta)
    row.update(prov)
    return row


def text_keys(task: str) -> tuple[str, str]:
    """The question and solution keys of a dataset's JSONL rows."""
    return ("question", "answer") if task == "gsm8k" else ("problem", "solution")


def strategy_mismatch(strategy: str, t, mem_threshold, threshold_from, fraction) -> str | None:
    """What is wrong when options of one selection strategy come with another (they would be ignored)."""
    premem = [o for o, v in (("--t", t), ("--mem-threshold", mem_threshold), ("--threshold-from", threshold_from))
              if v is not None]
    if premem and strategy != "premem":
        return f"{premem[0]} applies to --strategy premem only (this is --strategy {strategy})"
    if fraction is not None and strategy not in ("ifd", "heuristic"):
        return f"--fraction applies to --strategy ifd or heuristic only (this is --strategy {strategy})"
    return None
