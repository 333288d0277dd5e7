"""What the op needs from the Keras backend beyond `keras.ops`, in one place.

The rules are written once, in `keras.ops` (`rules.py`, `lateral.py`, `control.py`,
`statistics.py`, `neighbourhoods.py`). This module holds the rest, chosen once by
`keras.backend.backend()`:

- the custom gradient (`custom_identity`): `tf.custom_gradient` on TensorFlow,
  `jax.custom_vjp` on JAX;
- TensorFlow's fast paths: `fast_path` compiles a rule's small kernels with XLA
  (`tf.function(jit_compile=True)`; on JAX the whole step is compiled anyway), and
  the k-th largest entry comes from `NthElement` on the CPU outside XLA;
- what keeps the matched control's memory to a few samples' size: `map_chunks`, a
  loop over a batch a few samples at a time, `graph_path`, a plain TensorFlow
  graph for it, and `after`, an order in a TensorFlow graph;
- the random draws (`uniform`, and the control's `random_bits` from `seed_key` and
  `fold_in`), stateless and keyed by a `[2]` integer seed: TensorFlow's Philox,
  JAX's threefry. The two backends draw different masks for the same seed and
  step; each is reproducible;
- `add_n`, a sum of many tensors (TensorFlow's own op keeps its rounding).

Only TensorFlow and JAX are written out; any other backend raises here, nowhere else.
"""

import contextlib
import functools
import inspect

import keras
import numpy as np

NAME = keras.backend.backend()
if NAME not in ("tensorflow", "jax"):
    raise ImportError(
        "gradmask_tf's op runs on the TensorFlow and JAX backends of Keras. "
        f"Received KERAS_BACKEND={NAME!r}; set it to 'tensorflow' or 'jax'."
    )
TENSORFLOW = NAME == "tensorflow"

if TENSORFLOW:
    import tensorflow as tf
else:
    import jax

# Whether float64 computes in float64 (JAX keeps float32 unless x64 is enabled).
HAS_FLOAT64 = TENSORFLOW or bool(jax.config.jax_enable_x64)


def fast_path(function):
    """Compiles `function` with XLA on TensorFlow, `jax.jit` on JAX.

    For a rule's many small ops on one-channel maps and its fused passes over the
    gradient, which TensorFlow otherwise runs one kernel at a time. Traced without
    autograph, as Keras traces its step: the op's loops and branches are explicit
    (`keras.ops.while_loop`, `cond`), and converting each function and what it calls
    cost about half a second of every training process.
    """
    if TENSORFLOW:
        return tf.function(jit_compile=True, autograph=False)(function)
    return _jit(function)


def _jit(function):
    """`jax.jit`, with `function`'s keyword-only arguments (its settings) static.

    Inside a compiled step it is inlined; called eagerly, it compiles once per shape
    and settings, where JAX would otherwise compile its loops anew at every call.
    """
    settings = [parameter.name for parameter in inspect.signature(function).parameters.values()
                if parameter.kind is parameter.KEYWORD_ONLY]
    return functools.wraps(function)(jax.jit(function, static_argnames=settings))


def graph_path(function):
    """Traces `function` into a TensorFlow graph, without XLA or autograph; `jax.jit` on
    JAX.

    For loops over a gradient's samples: the graph executor runs them without a
    Python step per iteration, and nothing is compiled per shape (XLA on the CPU
    also writes out the operand of every reduction, a gradient-sized copy).
    """
    if TENSORFLOW:
        return tf.function(function, autograph=False)
    return _jit(function)


def map_chunks(function, tensors, size, dtypes):
    """`function(chunk, first)` of the batch of `tensors` (a tuple), `size` samples at
    a time, one chunk after another, results concatenated.

    `chunk` is the tuple of the tensors' next `size` samples (fewer in the last
    chunk), `first` the number of its first sample (an int32 scalar), `dtypes` those
    of its results (a dtype or a tuple). Only one chunk's temporaries exist at once.
    On TensorFlow a loop that slices each chunk out (`map_fn` would first copy every
    input whole, outside XLA, and run up to 10 iterations at once in a graph); on JAX
    `lax.map`, which vmaps `function` over `size` samples at a time (each its own
    chunk of one).
    """
    if not TENSORFLOW:
        numpy = jax.numpy

        def one(sample):
            results = function(tuple(tensor[None] for tensor in sample[:-1]), sample[-1])
            return jax.tree_util.tree_map(lambda tensor: tensor[0], results)

        count = tensors[0].shape[0]
        index = numpy.arange(count, dtype="int32")
        return jax.lax.map(one, (*tensors, index), batch_size=max(1, min(size, count)))
    count = tf.shape(tensors[0])[0]
    num_chunks = (count + size - 1) // size
    arrays = [tf.TensorArray(dtype, size=num_chunks, infer_shape=False)
              for dtype in tf.nest.flatten(dtypes)]

    def step(index, arrays):
        if size == 1:  # a static size, as XLA needs
            chunk = tuple(tensor[index][None] for tensor in tensors)
        else:
            chunk = tuple(tensor[index * size:(index + 1) * size] for tensor in tensors)
        results = tf.nest.flatten(function(chunk, index * size))
        return index + 1, [array.write(index, result) for array, result in zip(arrays, results)]

    _, arrays = tf.while_loop(
        lambda index, _: index < num_chunks, step, (0, arrays), parallel_iterations=1
    )
    return tf.nest.pack_sequence_as(dtypes, [array.concat() for array in arrays])


def static_shape(tensor):
    """The static shape as a tuple of ints or None."""
    return tuple(tensor.shape)


def dynamic_shape(tensor):
    """The shape with unknown dimensions as tensors (for reshapes and draws)."""
    return tf.shape(tensor) if TENSORFLOW else tensor.shape


def cond(predicate, true_fn, false_fn):
    """`keras.ops.cond`; a concrete predicate on JAX picks its branch in Python.

    Eager JAX would trace and compile both branches of `lax.cond` on every call
    (they are new closures each time); TensorFlow's eager `tf.cond` runs one.
    """
    if not TENSORFLOW and not isinstance(predicate, jax.core.Tracer):
        return true_fn() if bool(predicate) else false_fn()
    return keras.ops.cond(predicate, true_fn, false_fn)


def add_n(tensors):
    """The sum of a list of tensors of one shape."""
    if TENSORFLOW:
        return tf.add_n(tensors)
    return functools.reduce(lambda total, tensor: total + tensor, tensors)


def _use_nth_element():
    # NthElement is linear time and about 3x faster than top_k on the CPU, but has
    # no XLA or GPU kernel.
    from gradmask_tf import compat

    if compat.in_xla_context():
        return False
    return not tf.config.list_physical_devices("GPU")


def kth_largest(values, k):
    """The k-th largest entry along the last axis (ties counted), shape [...]."""
    if TENSORFLOW and _use_nth_element():
        size = values.shape[-1]
        return tf.raw_ops.NthElement(input=values, n=size - k)
    return keras.ops.min(keras.ops.top_k(values, k, sorted=False)[0], axis=-1)


def _jax_key(seed):
    """A threefry key from a `[2]` integer seed (a Python int seed fills the first word)."""
    if isinstance(seed, int):
        seed %= 2**64
        return np.array([(seed >> 32) ^ (seed & 0xFFFFFFFF), 0], np.uint32)
    return jax.numpy.asarray(seed).astype("uint32")


def uniform(like, dtype, seed):
    """Uniform draws in [0, 1) of `like`'s shape, keyed by `seed`, else fresh.

    Args:
      like: A tensor whose shape the draws take.
      dtype: The draws' float dtype.
      seed: A `[2]` integer tensor, a Python int, or None. On TensorFlow None draws
        from the global generator; on JAX, which has no hidden state under `jit`,
        from a seed drawn when the op is traced.
    """
    if TENSORFLOW:
        if seed is None:
            return tf.random.uniform(tf.shape(like), dtype=dtype)
        if isinstance(seed, int):
            seed = tf.constant([seed, 0], tf.int64)
        return tf.random.stateless_uniform(
            tf.shape(like), seed=tf.cast(seed, tf.int64), dtype=dtype, alg="philox"
        )
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    return jax.random.uniform(_jax_key(seed), like.shape, dtype=dtype)


def seed_key(seed):
    """`seed` as the key `random_bits` takes: a `[2]` integer tensor, a Python int or None.

    On TensorFlow a `[2]` int64 tensor (None: drawn now from the global generator,
    so a fresh draw on each call), a tensor input whatever the seed's value, so a
    compiled function is traced once; on JAX a threefry key (None: drawn when the op
    is traced, as in `uniform`).
    """
    if TENSORFLOW:
        if seed is None:
            return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
        if isinstance(seed, int):
            return tf.constant([seed, 0], tf.int64)
        return tf.cast(seed, tf.int64)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    return _jax_key(seed)


def random_bits(like, key):
    """Uniform 32-bit integers of `like`'s shape, as int32 (every value equally likely).

    Stateless, keyed by `seed_key`'s key: TensorFlow's Philox, JAX's threefry.
    """
    if TENSORFLOW:
        return tf.random.stateless_uniform(
            tf.shape(like), seed=key, dtype=tf.int32, minval=None, maxval=None, alg="philox"
        )
    bits = jax.random.bits(key, like.shape, "uint32")
    return jax.lax.bitcast_convert_type(bits, "int32")


def sample_bits(like, key, first, salt=None):
    """`random_bits` of `like`'s shape `[n, ...]`, sample `i`'s keyed by
    `fold_in(key, first + i)` (then by `salt`, if given): a sample's draw is the same
    whatever chunk of its batch it is drawn in, and with or without XLA."""

    def sample_key(index):
        key_of_sample = fold_in(key, first + index)
        return key_of_sample if salt is None else fold_in(key_of_sample, salt)

    if like.shape[0] == 1:
        return random_bits(like, sample_key(0))
    if TENSORFLOW:
        shape = tf.shape(like)[1:]
        return tf.map_fn(
            lambda index: tf.random.stateless_uniform(
                shape, seed=sample_key(index), dtype=tf.int32, minval=None, maxval=None,
                alg="philox",
            ),
            tf.range(tf.shape(like)[0]),
            fn_output_signature=tf.int32,
        )
    return jax.vmap(lambda index: random_bits(like[0], sample_key(index)))(
        jax.numpy.arange(like.shape[0], dtype="int32")
    )


def after(tensors):
    """A context whose ops run only once `tensors` are computed.

    In a TensorFlow graph the executor runs an op as soon as its inputs are ready,
    so work that could wait (a large temporary) may otherwise be held alongside
    what it follows. Eagerly, and on JAX (XLA schedules the whole step), ops run in
    the order written: nothing to do.
    """
    if TENSORFLOW and not tf.executing_eagerly():
        return tf.control_dependencies(tensors)
    return contextlib.nullcontext()


def fold_in(key, data):
    """A new key from `key` (of `seed_key`) and an int32 scalar `data`."""
    if TENSORFLOW:
        return tf.random.experimental.stateless_fold_in(key, data)
    return jax.random.fold_in(key, data)


def generator_seed(seed):
    """`seed` as `keras.random.SeedGenerator` takes it on this backend.

    JAX's generators hold uint32 words: a 63-bit seed is folded into one.
    """
    if seed is None or TENSORFLOW:
        return seed
    seed %= 2**64
    return (seed >> 32) ^ (seed & 0xFFFFFFFF)


def custom_identity(x, enabled, seed, probe, backward):
    """Identity forward whose backward is `backward(upstream, enabled, seed, probe)`.

    `backward` returns `(gradient of x, gradient of probe)`; `enabled` (bool),
    `seed` (`[2]` integers) and `probe` (float32 `[2]`) are tensors.
    """
    if TENSORFLOW:
        return _tensorflow_identity(x, enabled, seed, probe, backward)
    return _jax_identity(x, enabled, seed, probe, backward)


def _tensorflow_identity(x, enabled, seed, probe, backward):
    # Every tensor reaches the tf.custom_gradient function positionally: passed by
    # keyword, custom_gradient silently falls back to plain autodiff
    # (tensorflow#65839); it reads no variable (tensorflow#31945).
    @tf.custom_gradient
    def identity(x, enabled, seed, probe):
        def grad(upstream):
            result, statistics = backward(upstream, enabled, seed, probe)
            return result, None, None, statistics

        return tf.identity(x), grad

    return identity(x, enabled, seed, probe)


def _float0_zeros(value):
    # The cotangent of an integer or bool input.
    return np.zeros(np.shape(value), dtype=jax.dtypes.float0)


def _jax_identity(x, enabled, seed, probe, backward):
    @jax.custom_vjp
    def identity(x, enabled, seed, probe):
        return x

    def forward(x, enabled, seed, probe):
        return x, (enabled, seed, probe)

    def grad(residuals, upstream):
        enabled, seed, probe = residuals
        result, statistics = backward(upstream, enabled, seed, probe)
        return result, _float0_zeros(enabled), _float0_zeros(seed), statistics

    identity.defvjp(forward, grad)
    return identity(x, enabled, seed, probe)


def convert_switches(enabled, seed, probe):
    """The custom gradient's inputs as tensors: bool, `[2]` seed, float32 `[2]`."""
    if TENSORFLOW:
        seed = tf.zeros([2], tf.int64) if seed is None else tf.cast(seed, tf.int64)
        probe = tf.zeros([2], tf.float32) if probe is None else probe
        return tf.convert_to_tensor(enabled, tf.bool), seed, probe
    numpy = jax.numpy
    seed = numpy.zeros([2], "uint32") if seed is None else _jax_key(seed)
    probe = numpy.zeros([2], "float32") if probe is None else numpy.asarray(probe, "float32")
    return numpy.asarray(enabled, bool), seed, probe
