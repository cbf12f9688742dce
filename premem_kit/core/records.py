"""The per-example record schema, written once: one Parquet file per checkpoint x split x variant,
one row per example (where the files live is `runs.py`'s business).

RECORD_COLUMNS is the schema; the Arrow schema, the checks on write and the docs table all come from
it (`python -c "import premem_kit.core.records as r; print(r.markdown_table())"` prints the docs table).
"""
from __future__ import annotations

from premem_kit.core.errors import KitError
from premem_kit.core.files import atomic_write_with

SPLITS = ("train", "test")
OUTCOMES = ("correct", "incorrect", "unparseable")  # what a graded sample can be (tasks/grading.py)
VARIANTS = {"original": "", "first": " First", "we_know_that": " We know that"}

# name -> (Arrow type, meaning)
RECORD_COLUMNS = {
    "id": ("string", "stable example id, e.g. gsm8k/train/42"),
    "step": ("int64", "optimizer step of the checkpoint (0 = base model)"),
    "epoch": ("float64", "epoch of the checkpoint (0.0 for the base model)"),
    "split": ("string", "train or test"),
    "variant": ("string", "prompt variant: original, first, we_know_that"),
    "samples": ("list<string>", "the n sampled completions, stop string removed"),
    "answers": ("list<string>", "extracted final answer per sample (null when unparseable)"),
    "outcomes": ("list<string>", "per sample: correct, incorrect or unparseable"),
    "accuracy": ("float64", "fraction of samples that are correct"),
    "perplexity": ("float64", "teacher-forced perplexity of the target (NaN when not computed)"),
    "target_tokens": ("int64", "number of target tokens the perplexity averages over"),
}
# Optional columns: files written before they existed still load (read_records fills the default).
OPTIONAL_COLUMNS = {
    "target_cut": ("bool", "the target was cut at max_length, so its perplexity covers part of it", False),
    "example_hash": ("string", "hash of the example's prompt and target (what the row measured; null in older "
                               "files)", None),
}
SETTINGS_KEY = b"premem_kit.settings"  # Parquet metadata: the evaluation settings that made the file

# The greedy pass (evaluate.py --greedy, the ATC score): the record's id, step and split, then its own columns.
GREEDY_COLUMNS = {k: RECORD_COLUMNS[k] for k in ("id", "step", "split")} | dict(
    text=("string", "greedy completion"),
    answer=("string", "extracted answer (null when unparseable)"),
    outcome=("string", "correct, incorrect or unparseable"),
    likelihood=("float64", "exp(mean log-prob) of the completion up to and including \\nDone. (ATC)"),
    tokens=("int64", "tokens the likelihood averages over"),
)


class RecordError(KitError, ValueError):
    """A file that is not a valid record file; the message names it."""


def arrow_type(name: str):
    import pyarrow as pa

    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[5:-1]))
    return {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}[name]


def arrow_schema(columns=None):
    """The Arrow schema of record files (RECORD_COLUMNS plus the optional columns)."""
    import pyarrow as pa

    if columns is None:
        columns = {**RECORD_COLUMNS, **{k: v[:2] for k, v in OPTIONAL_COLUMNS.items()}}
    return pa.schema([(k, arrow_type(t)) for k, (t, _) in columns.items()])


def markdown_table(columns=None) -> str:
    columns = columns or {**RECORD_COLUMNS, **{k: v[:2] for k, v in OPTIONAL_COLUMNS.items()}}
    lines = ["| column | type | meaning |", "|---|---|---|"]
    return "\n".join(lines + [f"| `{k}` | {t} | {m} |" for k, (t, m) in columns.items()])


def check_rows(rows: list[dict]) -> None:
    if not rows:
        raise RecordError("no record rows to write (an empty split or eval_train_examples 0?)")
    missing = [c for c in RECORD_COLUMNS if c not in rows[0]]
    if missing:
        raise RecordError(f"record rows lack columns {missing}")
    for r in rows:
        bad = [o for o in r["outcomes"] if o not in OUTCOMES]
        if bad:
            raise RecordError(f"record {r['id']}: outcome {bad[0]!r} is not one of {OUTCOMES}")


def write_table(path, table) -> None:
    """An Arrow table as Parquet, atomically."""
    import pyarrow.parquet as pq

    atomic_write_with(path, lambda f: pq.write_table(table, f))


def write_records(path, rows: list[dict], settings: dict | None = None):
    """Check rows against the schema and write them atomically, with the settings that made them in the
    file's metadata (read_settings); returns the Arrow table."""
    import json

    import pyarrow as pa

    check_rows(rows)
    full = [{**{k: v[2] for k, v in OPTIONAL_COLUMNS.items()}, **r} for r in rows]
    schema = arrow_schema()
    if settings is not None:
        schema = schema.with_metadata({SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode()})
    table = pa.Table.from_pylist(full, schema=schema)
    write_table(path, table)
    return table


def write_greedy(path, rows: list[dict]):
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=arrow_schema(GREEDY_COLUMNS))
    write_table(path, table)
    return table


def read_settings(path) -> dict | None:
    """The evaluation settings a record file was made with (None: a file written before they were kept)."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[SETTINGS_KEY]) if SETTINGS_KEY in meta else None


def read_columns(path, columns: list[str], schema: dict | None = None):
    """Some columns of a record file (schema: RECORD_COLUMNS, or GREEDY_COLUMNS) as an Arrow table;
    RecordError names a torn or foreign file."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise RecordError(f"{path}: cannot read Parquet record file ({type(e).__name__}: {e})") from None
    missing = [c for c in (schema or RECORD_COLUMNS) if c not in names]
    if missing:
        raise RecordError(f"{path}: not a record file, missing columns {missing}")
    try:
        return pq.read_table(path, columns=[c for c in columns if c in names])
    except Exception as e:  # noqa: BLE001
        raise RecordError(f"{path}: cannot read Parquet record file ({type(e).__name__}: {e})") from None


def read_records(path):
    """A record file as a pandas DataFrame (optional columns filled in for older files)."""
    df = read_columns(path, list(RECORD_COLUMNS) + list(OPTIONAL_COLUMNS)).to_pandas()
    for k, (_, _, default) in OPTIONAL_COLUMNS.items():
        if k not in df.columns:
            df[k] = default
    return df


def load(run, greedy: bool = False):
    """Every record of a run as one pandas DataFrame, sorted by step, split, variant and id: the sampled
    records (RUN/records; the same rows as pd.read_parquet(RUN / "records")), or with greedy=True the
    greedy ones. Optional columns are filled in for files written before they existed."""
    import pandas as pd

    from premem_kit.core import runs

    if greedy:
        paths = runs.list_greedy(run)
        frames = [read_columns(p, list(GREEDY_COLUMNS), GREEDY_COLUMNS).to_pandas() for p in paths]
        keys, cols = ["step", "split", "id"], list(GREEDY_COLUMNS)
    else:
        paths = [p for _, _, _, p in runs.list_records(run)]
        frames = [read_records(p) for p in paths]
        keys, cols = ["step", "split", "variant", "id"], list(RECORD_COLUMNS) + list(OPTIONAL_COLUMNS)
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).sort_values(keys, kind="stable", ignore_index=True)


def is_readable(path) -> bool:
    """True when the file is a whole record file (a torn or foreign file is not 'done')."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
        return meta.num_rows > 0 and all(c in names for c in RECORD_COLUMNS)
    except Exception:  # noqa: BLE001
        return False


def record_table(ids, step: int, epoch: float, split: str, types, perplexity=None, target_tokens=None,
                 variant: str = "original", samples=None):
    """A record table from an answer-type matrix, vectorized (for published results).

    types[ex, sample]: 0 correct, 1 incorrect, 2 unparseable. samples/answers are empty lists unless
    `samples` (a list of lists of str, or an Arrow list<string> array) is given; answers stay empty.
    perplexity defaults to NaN and target_tokens to -1.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    types = np.asarray(types)
    n, s = types.shape
    offsets = pa.array(np.arange(0, n * s + 1, s, dtype=np.int32))
    outcome_names = pa.array(list(OUTCOMES), type=pa.string())
    outcomes = pa.ListArray.from_arrays(offsets, pc.take(outcome_names, pa.array(types.ravel().astype(np.int8))))
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))
    if samples is None:
        samp = empty
    elif isinstance(samples, pa.Array):
        samp = samples
    else:
        samp = pa.array(samples, type=pa.list_(pa.string()))
    if len(samp) != n:
        raise ValueError(f"samples has {len(samp)} rows, types {n}")
    ppl = np.full(n, np.nan) if perplexity is None else np.asarray(perplexity, dtype=np.float64)
    tok = np.full(n, -1, dtype=np.int64) if target_tokens is None else np.asarray(target_tokens, dtype=np.int64)
    cols = [
        pa.array(list(ids), type=pa.string()),
        pa.array(np.full(n, step, dtype=np.int64)),
        pa.array(np.full(n, epoch, dtype=np.float64)),
        pa.array(np.full(n, split, dtype=object), type=pa.string()),
        pa.array(np.full(n, variant, dtype=object), type=pa.string()),
        samp,
        empty,
        outcomes,
        pa.array((types == 0).mean(axis=1) if s else np.full(n, np.nan)),
        pa.array(ppl),
        pa.array(tok),
        pa.array(np.zeros(n, dtype=bool)),
        pa.nulls(n, pa.string()),  # example_hash: the published files do not carry the questions
    ]
    return pa.Table.from_arrays(cols, schema=arrow_schema())
