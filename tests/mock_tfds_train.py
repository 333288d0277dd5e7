"""Runs train.py with tensorflow-datasets mocked (random examples, no download).

Used by the end-to-end tests for datasets that only TFDS provides (CIFAR-10):
`python tests/mock_tfds_train.py --dataset=cifar10 ...`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # noqa: E402

import train  # noqa: E402

if __name__ == "__main__":
    num_examples = int(os.environ.get("MOCK_TFDS_EXAMPLES", "64"))
    with tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        sys.exit(train.main(sys.argv))
