"""Analysis (premem.py): runs' records as arrays (rundata.py), the memorization threshold
(calibration.py), PreMemAcc against test accuracy with its figures (analyze.py, analysis_figures.py),
robustness (Figures 6-7), the earlier metrics (priors.py, prior_metrics.py: Figure 5) and the authors'
published results (download.py, published.py)."""
