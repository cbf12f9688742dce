"""Default settings of the analysis commands (premem.py analyze, import-published, robustness, priors).

One light module (no numpy, no pandas), so that the premem.py parser can show these defaults in
--help without loading the libraries that use them.
"""

DEFAULT_SWEEP = (-5.0, 1.0, 50)  # loglog threshold grid of the calibration: min, max, number of points
DEFAULT_FRAGILE_T = 0.75  # fragile example: PreMemAcc at the last checkpoint < this
DEFAULT_MODEL = "meta-llama/Meta-Llama-3-8B"  # the model of the authors' published runs
DEFAULT_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # robustness: PreMemAcc bin edges
DEFAULT_FIG6_EXAMPLES = 3  # robustness: examples in the Figure 6 panel
DEFAULT_GRAD_BATCHES = 5  # priors: minibatches of the gradient variance
DEFAULT_GRAD_SEED = 0  # priors: seed of the minibatch draws
