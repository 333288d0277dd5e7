"""Size, as a signal: no module past 500 lines, no function past 60.

Every module, found by walking gradmask_tf/, eval/ and train.py, is at most 500 lines;
every function in it (nested ones and methods too) at most 60 lines of code, its
docstring, blank lines and comment-only lines not counted; train.py, the shell over
`gradmask_tf.trainer.run`, at most 150 lines. A longer one holds two jobs: split it by
job. An exception goes in `_EXCEPTIONS` with its reason.
"""

import ast
import textwrap

from tests.helpers import ROOT

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_TRAIN_LINES = 150
# ("path/from/root.py", "qualified.name") -> (most lines of code, why). Keep it empty.
_EXCEPTIONS = {}


def _modules():
    return [ROOT / "train.py", *sorted((ROOT / "gradmask_tf").rglob("*.py")),
            *sorted((ROOT / "eval").rglob("*.py"))]


def _functions(tree):
    """`(qualified name, node)` of every function in `tree`, nested ones included."""
    stack = [("", node) for node in tree.body]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            prefix = f"{name}."
        stack.extend((prefix, child) for child in ast.iter_child_nodes(node))


def _code_lines(lines, node):
    """Lines of code of function `node`: not its docstring, blank or comment-only lines."""
    docstring = set()
    body = node.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        docstring = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1 for number in range(node.lineno, node.end_lineno + 1)
        if number not in docstring
        and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#")
    )


def _sizes(path):
    """`(module lines, {qualified name: lines of code})` of the module at `path`."""
    text = path.read_text()
    lines = text.splitlines()
    return len(lines), {name: _code_lines(lines, node)
                        for name, node in _functions(ast.parse(text, str(path)))}


def test_the_counter_leaves_out_docstrings_blank_lines_and_comments():
    source = textwrap.dedent('''\
        def outer(a):
            """A docstring

            of three lines."""
            # a comment

            b = a + 1  # code

            def inner():
                """One line."""
                return b
            return inner
        class Thing:
            def method(self):
                return 1
        ''')
    tree = ast.parse(source)
    lines = source.splitlines()
    sizes = {name: _code_lines(lines, node) for name, node in _functions(tree)}
    assert sizes == {"outer": 6, "outer.inner": 2, "Thing.method": 2}


def test_no_module_or_function_is_too_long():
    modules = _modules()
    assert {"train.py", "gradmask_tf/trainer.py", "eval/plans/__init__.py"} <= {
        str(path.relative_to(ROOT)) for path in modules}
    failures = []
    seen = set()
    for path in modules:
        relative = str(path.relative_to(ROOT))
        module_lines, functions = _sizes(path)
        limit = MAX_TRAIN_LINES if relative == "train.py" else MAX_MODULE_LINES
        if module_lines > limit:
            failures.append(f"{relative}: {module_lines} lines (at most {limit})")
        for name, count in sorted(functions.items()):
            most, _ = _EXCEPTIONS.get((relative, name), (MAX_FUNCTION_LINES, ""))
            seen.add((relative, name))
            if count > most:
                failures.append(f"{relative}: {name}: {count} lines of code (at most {most})")
    assert not failures, "split by job:\n" + "\n".join(failures)
    assert not set(_EXCEPTIONS) - seen, f"exceptions for no function: {set(_EXCEPTIONS) - seen}"
