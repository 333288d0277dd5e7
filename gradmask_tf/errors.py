"""The one form of argument error in gradmask_tf, as Keras words its own."""


class InvalidArgumentError(ValueError):
    """A `ValueError` about one argument; its parts stay readable for callers.

    A command line, for instance, names its own flag instead of the argument.

    Attributes:
      name: The argument's name.
      expected: What it allows, in words.
      value: What it received.
    """

    def __init__(self, name, expected, value):
        super().__init__(
            f"Invalid value for argument `{name}`: expected {expected}. "
            f"Received: {name}={value!r}"
        )
        self.name = name
        self.expected = expected
        self.value = value

    def __reduce__(self):
        return type(self), (self.name, self.expected, self.value)


def invalid(name, expected, value):
    """An `InvalidArgumentError` naming the argument, what it allows and what it received.

    Returned, not raised, so the caller's `raise invalid(...)` shows in its traceback.
    """
    return InvalidArgumentError(name, expected, value)
