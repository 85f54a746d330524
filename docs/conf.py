"""Sphinx configuration for the sktransfer documentation.

Build (from the repository root)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing here reaches the network: no intersphinx, no linkcheck, and the gallery
examples run in their fast mode on data that ships with scikit-learn.
"""

import os
import re
import sys
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
ROOT_DIR = DOCS_DIR.parent
EXAMPLES_DIR = ROOT_DIR / "examples"

# The package is normally installed (pip install -e ".[docs]"); this makes a plain
# checkout work too.
sys.path.insert(0, str(ROOT_DIR))

# The gallery runs every examples/plot_*.py: fast mode unless asked otherwise
# (SKTRANSFER_EXAMPLE_FAST=0 builds the full-size gallery), no display. Set before
# sphinx-gallery (and matplotlib) are imported so the examples inherit them.
os.environ.setdefault("SKTRANSFER_EXAMPLE_FAST", "1")
os.environ["MPLBACKEND"] = "Agg"

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import sktransfer  # noqa: E402

# -- Project information -----------------------------------------------------------

project = "sktransfer"
author = "The sktransfer developers"
copyright = "sktransfer developers, BSD-3-Clause"  # noqa: A001 - Sphinx's name
release = sktransfer.__version__
version = re.sub(r"(\d+\.\d+)\..*", r"\1", release)

# -- General configuration -----------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
# No "sphinx.ext.intersphinx": the docs build offline and must not fetch inventories.

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
]
root_doc = "index"
default_role = "literal"  # `x` renders as code instead of an unresolved reference
nitpicky = False  # torch / sklearn types are not resolvable without intersphinx

# -- autodoc / autosummary ---------------------------------------------------------

autodoc_default_options = {"member-order": "alphabetical"}
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
autoclass_content = "class"  # __init__ only stores parameters (scikit-learn style)

autosummary_generate = True  # stubs into docs/generated/ (git-ignored)
autosummary_generate_overwrite = True
autosummary_imported_members = False

# -- numpydoc ------------------------------------------------------------------------

numpydoc_show_class_members = False  # autosummary/autodoc list the methods
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False  # would need intersphinx for numpy/torch types
numpydoc_validation_checks = set()  # no numpydoc style validation in the build

# -- sphinx-gallery --------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # run every plot_*.py (and only those); scripts with other names are shown, not run
    "filename_pattern": re.escape(os.sep) + r"plot_",
    "ignore_pattern": r"__init__\.py",
    "doc_module": ("sktransfer",),  # code links and backreferences: these docs only
    "backreferences_dir": os.path.join("generated", "backreferences"),
    "image_scrapers": ("matplotlib",),
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    # its pages load jQuery/DataTables from CDNs and land in docs/ itself: off
    "write_computation_times": False,
    # SKTRANSFER_DOCS_NOPLOT=1 skips running the examples (a quick build of the text)
    "plot_gallery": os.environ.get("SKTRANSFER_DOCS_NOPLOT") != "1",
    "abort_on_example_error": False,  # run them all, then fail the build on any error
    "only_warn_on_example_error": False,
}

GALLERY_HEADER_NAMES = [
    f"{stem}{ext}"
    for ext in (".txt", ".rst")
    for stem in ("GALLERY_HEADER", "README", "readme")
]
FALLBACK_GALLERY_HEADER = DOCS_DIR / "gallery_header.txt"


def _use_fallback_gallery_header():
    """Let the gallery build while ``examples/`` has no GALLERY_HEADER of its own.

    sphinx-gallery refuses an examples folder without a GALLERY_HEADER.rst /
    README.txt. Until ``examples/`` ships one, use ``docs/gallery_header.txt``
    for that folder only; once ``examples/`` has its own header this does nothing.
    """
    if not EXAMPLES_DIR.is_dir() or any(
        (EXAMPLES_DIR / name).is_file() for name in GALLERY_HEADER_NAMES
    ):
        return
    from sphinx_gallery import gen_rst

    original = gen_rst._get_gallery_header

    def get_gallery_header(dir_, gallery_conf, raise_error=True):
        if Path(dir_).resolve() == EXAMPLES_DIR.resolve():
            return str(FALLBACK_GALLERY_HEADER)
        return original(dir_, gallery_conf, raise_error=raise_error)

    gen_rst._get_gallery_header = get_gallery_header


_use_fallback_gallery_header()

# -- HTML output ---------------------------------------------------------------------

try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # the "docs" extra installs it; fall back to Sphinx's default
    html_theme = "alabaster"
    html_theme_options = {}
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navbar_align": "left",
        "show_prev_next": False,
        "header_links_before_dropdown": 5,
    }
html_title = f"sktransfer {release}"
html_static_path = []
html_show_sourcelink = False
