"""One shared check of Keras's layer contract, used for every GradientMask variant.

Config round trip, symbolic and eager calls, a `fit` step, mixed precision, `.keras`
save and reload with `safe_mode=True`, and `clone_model`.
"""

import keras
import numpy as np


def _model_around(layer, input_shape):
    """A tiny trainable model with `layer` after a non-linearity, as in practice."""
    inputs = keras.Input(input_shape)
    if len(input_shape) == 3:
        x = keras.layers.Conv2D(input_shape[-1], 3, padding="same", activation="relu")(
            inputs
        )
    else:
        x = keras.layers.Dense(input_shape[-1], activation="relu")(inputs)
    x = layer(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit_one_step(model, input_shape, steps=1):
    rng = np.random.default_rng(0)
    x = rng.random((4, *input_shape)).astype("float32")
    y = rng.integers(0, 3, 4)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=steps, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.get_weights()
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    return x


def check_layer_contract(layer_class, config, input_shape, tmp_path):
    """Checks the Keras layer contract for `layer_class(**config)`.

    Args:
      layer_class: The layer class.
      config: Constructor keyword arguments.
      input_shape: Input shape without the batch dimension.
      tmp_path: A temporary directory for the saved model.
    """
    layer = layer_class(**config)

    # get_config mirrors __init__ and round-trips.
    layer_config = layer.get_config()
    for key, value in config.items():
        assert layer_config[key] == value, key
    clone = layer_class.from_config(layer_config)
    assert clone.get_config() == layer_config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is layer_class
    assert restored.get_config() == layer_config

    # Symbolic call keeps the shape; eager calls are the identity.
    symbolic = layer_class(**config)(keras.Input(input_shape))
    assert tuple(symbolic.shape) == (None, *input_shape)
    x = np.random.default_rng(1).random((2, *input_shape)).astype("float32")
    fresh = layer_class(**config)
    for training in (None, False, True):
        np.testing.assert_array_equal(np.asarray(fresh(x, training=training)), x)
    assert fresh.compute_output_shape((2, *input_shape)) == (2, *input_shape)

    # A training step, saving and reloading with safe_mode, cloning.
    model = _model_around(layer_class(**config), input_shape)
    batch = _fit_one_step(model, input_shape)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), model.predict(batch, verbose=0))
    reloaded_layer = reloaded.layers[2]
    assert type(reloaded_layer) is layer_class
    assert reloaded_layer.get_config()["rule"] == config.get("rule", "mean")
    cloned = keras.models.clone_model(model)
    assert type(cloned.layers[2]) is layer_class
    assert cloned.layers[2].get_config() == model.layers[2].get_config()

    # Mixed precision: float16 compute, float32 variables, loss scaling in fit.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model_around(layer_class(**config), input_shape)
        assert model.layers[2].compute_dtype == "float16"
        # A step whose scaled gradient overflows float16 changes no weight (the loss
        # scale is halved instead, by design): three steps, as one failed once on JAX.
        _fit_one_step(model, input_shape, steps=3)
    finally:
        keras.config.set_dtype_policy(previous)
