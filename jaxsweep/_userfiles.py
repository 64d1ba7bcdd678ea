"""What ``jaxsweep run`` reads: a model factory in a file, data in an npz, an optimizer name.

Each loader fails with one ``ValueError``/``TypeError``/``OSError`` whose message starts with
the thing that is wrong (the file, the factory, the key), so the command can print one line.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
from collections.abc import Callable

import numpy as np

TRAIN_VAL_KEYS = ("x_train", "y_train", "x_val", "y_val")


def load_factory(spec: str) -> Callable:
    """The model factory named by ``FILE.py:FACTORY`` (a function, a module class, or a
    ``jaxsweep.Training``)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"{spec}: expected FILE.py:FACTORY, e.g. model.py:make_model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    module_name = "_jaxsweep_user_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    # the file's own folder first, so that it can import its neighbours as when run directly
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise ValueError(
            f"{path}: could not be imported ({type(error).__name__}: {error})"
        ) from None
    finally:
        sys.path.remove(folder)
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{path}: has no {name!r} (callables defined there: {', '.join(public)})")
    from ._training import Training  # the command trains: JAX is loaded anyway

    if not callable(factory) and not isinstance(factory, Training):
        raise TypeError(
            f"{spec}: {name} is a {type(factory).__name__}, not a model factory or a "
            "jaxsweep.Training"
        )
    return factory


def load_npz(path: str):
    """``(x, y)`` or ``{"train": (x, y), "val": (x, y)}`` from an ``.npz`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    keys = set(arrays)
    if keys >= set(TRAIN_VAL_KEYS):
        x_train, y_train, x_val, y_val = (arrays[k] for k in TRAIN_VAL_KEYS)
        return {"train": (x_train, y_train), "val": (x_val, y_val)}
    if keys >= {"x", "y"}:
        return arrays["x"], arrays["y"]
    raise ValueError(
        f"{path}: expected arrays x and y, or {', '.join(TRAIN_VAL_KEYS)}; it holds "
        f"{', '.join(sorted(keys)) or 'nothing'}"
    )


def parse_optimizer(text: str) -> Callable:
    """An optax factory from ``adam``, ``sgd(momentum=0.9)`` or ``adamw(weight_decay=1e-4)``."""
    import optax

    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call is not None else node
    if not isinstance(name_node, ast.Name) or (call is not None and call.args):
        raise ValueError(
            f"--optimizer: expected an optax name with keyword arguments, e.g. adam or "
            f"'sgd(momentum=0.9)', got {text!r}"
        )
    factory = getattr(optax, name_node.id, None)
    if not callable(factory) or name_node.id.startswith("_"):
        raise ValueError(f"--optimizer: optax has no optimizer {name_node.id!r}")
    if call is None:
        return factory
    keywords = {}
    for keyword in call.keywords:
        try:
            keywords[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise ValueError(
                f"--optimizer: {keyword.arg} must be a literal (a number, True, ...)"
            ) from None
    return functools.partial(factory, **keywords)
