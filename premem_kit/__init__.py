"""premem_kit: the library behind the flat scripts (train.py, evaluate.py, premem.py, curate.py,
sweep.py). Start with metric.py, the PreMemAcc metric in numpy.

Layers: a module imports only from layers below its own (tests/test_layout.py reads this list).

    0  errors analysis_defaults                    the one error base class; analysis commands' defaults
    1  files config grading metric cli curation wordproblems hub download   I/O, config schema, grading, metric
    2  data records runs figures parallel          datasets, record schema, run-folder layout, figure files
    3  models inference rundata arith              model loading, batched sampling, loading runs
    4  evaluation calibration analysis_figures published rft chat prior_metrics
    5  callbacks analysis robustness priors selection collectors rft_sampling grid
    6  training grid_run                           training runs; a grid's cells as subprocesses
    7  algorithm1 scaling                          rounds of training; one run per train-set fraction
    8  fig8                                        Algorithm 1 once per strategy
"""
