"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "sktransfer._docstrings",
    "sktransfer._blocknet",
    "sktransfer._blocks",
    "sktransfer._extract",
    "sktransfer._finetune",
    "sktransfer._inspect",
    "sktransfer._persist",
    "sktransfer._frozen_store",
    "sktransfer._pretrain",
    "sktransfer._weight_files",
    "sktransfer.datasets",
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


def _public_classes():
    import inspect

    import sktransfer

    return [obj for name in sktransfer.__all__
            if inspect.isclass(obj := getattr(sktransfer, name))
            and hasattr(obj, "get_params")]


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda c: c.__name__)
def test_every_parameter_is_documented_in_order(cls):
    """numpydoc's Parameters section lists the signature's parameters, in order
    (shared parameters come from sktransfer._docstrings fragments)."""
    import inspect

    ClassDoc = pytest.importorskip("numpydoc.docscrape").ClassDoc
    documented = [p.name for p in ClassDoc(cls)["Parameters"]]
    assert documented == list(inspect.signature(cls).parameters)
    assert "{" + "finetune_params}" not in cls.__doc__  # every fragment line was filled


def test_fill_doc_names_an_unknown_fragment():
    from sktransfer._docstrings import fill_doc

    class Est:
        """Doc.

        Parameters
        ----------
        {no_such_fragment}
        """

    with pytest.raises(KeyError, match="no_such_fragment.*known: \\[.*'finetune_params'"):
        fill_doc(Est)
