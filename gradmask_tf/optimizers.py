"""Optimizers by name, for the training command and the pruning fine-tune alike."""

from gradmask_tf.errors import invalid

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def make_optimizer(name, learning_rate, *, momentum=0.9, keras_module=None):
    """A fresh optimizer `name` at `learning_rate` (`momentum` applies to `sgd` only).

    `keras_module` is Keras 3 by default; pass `tf_keras` for the TF-MOT twin.
    """
    if keras_module is None:
        import keras as keras_module
    if name == "sgd":
        return keras_module.optimizers.SGD(learning_rate, momentum=momentum)
    classes = {
        "adam": keras_module.optimizers.Adam,
        "adamw": keras_module.optimizers.AdamW,
        "rmsprop": keras_module.optimizers.RMSprop,
    }
    if name not in classes:
        raise invalid("optimizer", f"one of {', '.join(OPTIMIZERS)}", name)
    return classes[name](learning_rate)
