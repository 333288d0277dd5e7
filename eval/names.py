"""The names the evaluators share with their readers: attacks, pruning modes, methods.

The figures and the command line read results by these names; importing them here
loads no evaluator and none of the libraries the evaluators adapt (CleverHans,
TF-MOT, tf-keras-vis).
"""

# eval.adversarial's attacks; the iterative ones take `pgd_steps` steps.
ATTACKS = ("fgsm", "pgd", "bim", "mim")
ITERATIVE_ATTACKS = ("pgd", "bim", "mim")
# Madry et al. (2018): 2.5 * eps / steps lets PGD walk to the far side of the ball
# from a random start; CleverHans requires the step to be at most eps. A result
# records this rule as its step size unless a step was given.
PGD_STEP_SIZE_RULE = "min(2.5 * eps / pgd_steps, eps)"

# eval.pruning's modes: masks applied with no training step, and after a fine-tune.
PRUNING_MODES = ("one_shot", "fine_tuned")

# eval.saliency's methods, the keys of its maps and of `foreground_focus`.
SALIENCY_METHODS = ("saliency", "smoothgrad", "gradcam++", "scorecam", "lateral_inhibition")
