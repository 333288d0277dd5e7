"""The backend-neutral test files again on JAX (`tests/backends.py`): every test of
`backends.JAX_FILES` in one fresh interpreter with `KERAS_BACKEND=jax` and
TensorFlow blocked (one interpreter: JAX, Keras and pytest start once)."""

from tests import backends


def test_jax_half(request):
    backends.run_jax_half(backends.jax_node_ids(request.session))
