"""Evaluations of a trained run: one module per claim, `python -m eval` to run them.

Imports nothing heavy: the command line reads these names before TensorFlow loads.
"""

# The evaluations `python -m eval` runs, in order, and their file names in RUN/eval/.
EVALUATIONS = ("adversarial", "pruning", "saliency", "quality")
