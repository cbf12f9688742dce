"""premem_kit: the library behind the flat scripts (train.py, evaluate.py, premem.py, curate.py,
sweep.py). Start with metric.py, the PreMemAcc metric in numpy.

Layers: a module imports only from layers below its own (tests/test_layout.py reads this list).

    0  errors                                      the one error base class
    1  files config grading metric cli             atomic I/O, the config schema, grading, the metric
    2  data records runs figures parallel          datasets, record schema, run-folder layout, figure files
    3  models inference rundata arith              model loading, batched sampling, loading runs
    4  evaluation calibration analysis_figures published rft
    5  callbacks analysis robustness priors selection collectors rft_sampling scaling
    6  training algorithm1 grid
"""
