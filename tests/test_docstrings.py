"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "sktransfer._blocknet",
    "sktransfer._blocks",
    "sktransfer._extract",
    "sktransfer._finetune",
    "sktransfer._inspect",
    "sktransfer._persist",
    "sktransfer._prefix_cache",
    "sktransfer._pretrain",
    "sktransfer._weights",
    "sktransfer.metrics",
    "sktransfer.plot",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "sktransfer.plot":
        pytest.importorskip("matplotlib")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
