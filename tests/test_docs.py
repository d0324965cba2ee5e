"""The documentation builds (mkdocs --strict), covers the public API, and its Python snippets run.

Fenced blocks marked ```python are executed, one namespace per page, in order; ```py blocks are fragments
(a ``...`` model, a framework that is not needed here) and are only rendered.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_strict_build_renders_every_page(site):
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.is_file(), f"{page} was not built"


@pytest.mark.parametrize("module, page", [("spectrakit.optim", "optim"), ("spectrakit.linalg", "linalg"),
                                          ("spectrakit.integrations", "integrations"),
                                          ("spectrakit.preclip", "preclip"),
                                          ("spectrakit.distributed", "distributed")])
def test_api_reference_documents_every_public_class_and_function(site, module, page):
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [n for n, v in vars(mod).items()
                                               if not n.startswith("_") and inspect.getmodule(v) is mod]
    public = [n for n in names if inspect.isclass(getattr(mod, n)) or inspect.isfunction(getattr(mod, n))]
    assert public
    html = (site / "api" / page / "index.html").read_text()
    missing = [n for n in public if f'id="{module}.{n}"' not in html]
    assert not missing, f"not in the API reference: {missing}"


def _snippets(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", [p for p in PAGES if _snippets(p)], ids=lambda p: str(p.relative_to(DOCS)))
def test_python_snippets_run(page, capsys):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(_snippets(page)):
        try:
            exec(compile(code, f"{page.name} snippet {i + 1}", "exec"), namespace)
        except Exception as err:  # name the page and snippet that broke
            raise AssertionError(f"{page.relative_to(DOCS)} snippet {i + 1} failed: {err!r}") from err


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert str(page.relative_to(DOCS)) in config, f"{page} is not in mkdocs.yml's nav"
