"""The one form of argument error in gradmask_tf, as Keras words its own."""


def invalid(name, expected, value):
    """A `ValueError` naming the argument, what it allows and what it received.

    Returned, not raised, so the caller's `raise invalid(...)` shows in its traceback.
    """
    return ValueError(
        f"Invalid value for argument `{name}`: expected {expected}. Received: {name}={value!r}"
    )
