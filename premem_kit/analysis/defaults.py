"""Default settings of the analysis commands (premem.py analyze, import-published, robustness, priors).

One light module (no numpy, no pandas), so that the premem.py parser can show these defaults in
--help without loading the libraries that use them.
"""

DEFAULT_SWEEP = (-5.0, 1.0, 50)  # loglog threshold grid of the calibration: min, max, number of points
DEFAULT_FRAGILE_T = 0.75  # fragile example: PreMemAcc at the last checkpoint < this
DEFAULT_MODEL = "meta-llama/Meta-Llama-3-8B"  # the model of the authors' published runs
# robustness: PreMemAcc bin edges, and a bin of its own for PreMemAcc = 1 (the last edge bin open at 1), as the
# authors' Figure 7 (gsm8k_orig_perplexity_gpt4o.ipynb: [f, f + 0.2) for f in 0, 0.2, ..., 0.8, and 1)
DEFAULT_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_BIN_FOR_ONE = True
EARLIER_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the kit's earlier bins: 4, the last closed [0.75, 1]
ROBUSTNESS_SAMPLES = 10  # the authors sample 10 answers per prompt for Figure 7 (c_run2.sh)
DEFAULT_FIG6_EXAMPLES = 3  # robustness: examples in the Figure 6 panel
DEFAULT_GRAD_BATCHES = 5  # priors: minibatches of the gradient variance
DEFAULT_GRAD_SEED = 0  # priors: seed of the minibatch draws (--grad-draw random only)
GRAD_DRAWS = ("first", "random")  # priors: the first n_batches x B train examples in order (the authors'), or seeded draws
GRAD_LOSSES = ("example", "token")  # priors: mean of per-example mean losses (the authors'), or the token-weighted mean
ATC_SCORES = ("sequence", "token-mean")  # priors: greedy answer's log-probability summed (the authors'), or per-token mean
ATC_FIT_ON = ("train", "test")  # priors: the reference run's split the ATC threshold is fitted on (the authors': train)
ATC_REFERENCE = dict(num_epochs=3, subset="full", learning_rate=2e-5)  # the authors' reference run (appendix B.3)
