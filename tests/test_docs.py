"""The documentation runs as written.

* every Python block of every page runs, and the output a page shows is what it prints
  (the rules are in ``tests/docs_runner.py`` and on the page "Writing these docs");
* ``mkdocs build --strict`` passes (skipped when mkdocs is not installed);
* every public function and class of ksampling has a docstring for the reference pages;
* the solver table the docs hook writes agrees with ``ksampling.samplers.info``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import docs_runner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def _load_hook():
    spec = importlib.util.spec_from_file_location("_docs_solver_table", DOCS / "hooks" / "solver_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_runs_and_shows_its_output(page):
    parsed = docs_runner.parse(page)
    if not parsed.code:
        pytest.skip("no Python blocks")
    missing = docs_runner.missing_requirements(parsed)
    if missing:
        pytest.skip(f"waits for {', '.join(missing)}")
    docs_runner.run_page(parsed)


def test_the_issue_2_page_exists_and_runs_code():
    """docs/ explains the parameterisations and demonstrates, with code, why a network can
    be trained to predict noise."""
    page = DOCS / "concepts" / "parameterisations.md"
    text = page.read_text(encoding="utf-8")
    assert "predict noise" in text
    parsed = docs_runner.parse(page)
    assert len([block for block in parsed.code if not block.skip]) >= 3
    assert not docs_runner.missing_requirements(parsed), "the page must run, not wait"
    nav_pages = re.findall(r"^\s*-[^\n]*?([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert nav_pages[:2] == ["index.md", "concepts/parameterisations.md"], "the docs start with this page"


# -- the runner itself: it must catch a wrong page ----------------------------------------------
RIGHT = """
```python
x = 6 * 7
print(f"{x} {x / 7:.3f}")
```

```text
42 6.000
```
"""


def test_runner_accepts_matching_output(tmp_path):
    docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", RIGHT))


def test_runner_rejects_wrong_output(tmp_path):
    page = docs_runner.parse(tmp_path / "p.md", RIGHT.replace("42 6.000", "42 6.001"))
    with pytest.raises(docs_runner.DocsError, match="printed"):
        docs_runner.run_page(page)


def test_runner_tolerance_and_skip(tmp_path):
    text = RIGHT.replace("```text", "<!-- docs-test: tolerance 0.002 -->\n```text").replace("6.000", "6.001")
    docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", text))
    too_far = text.replace("6.001", "6.01")
    with pytest.raises(docs_runner.DocsError):
        docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", too_far))
    relative = RIGHT.replace("```text", "<!-- docs-test: tolerance rel 0.1 -->\n```text").replace("42 ", "45 ")
    docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", relative))
    skipped = "<!-- docs-test: skip -->\n```python\nraise RuntimeError('not run')\n```\n"
    docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", skipped))


def test_runner_reports_the_failing_line(tmp_path):
    text = "intro\n\n```python\nx = 1\n```\n\n```python\nraise ValueError('boom')\n```\n"
    with pytest.raises(docs_runner.DocsError, match=r"p\.md:7"):
        docs_runner.run_page(docs_runner.parse(tmp_path / "p.md", text))


def test_runner_requires(tmp_path):
    text = "<!-- docs-test: requires ksampling.sample, ksampling.no_such_thing -->\n```python\npass\n```\n"
    assert docs_runner.missing_requirements(docs_runner.parse(tmp_path / "p.md", text)) == ["ksampling.no_such_thing"]


# -- docstrings ----------------------------------------------------------------------------------
def _public_modules():
    import ksampling

    names = ["ksampling"]
    for info in pkgutil.walk_packages(ksampling.__path__, "ksampling."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


def _public_objects(module):
    names = getattr(module, "__all__", None)
    if names is None:
        # No __all__ (the solver modules): what is public is what the registry hands out.
        from ksampling.samplers import SOLVERS

        names = [n for n, o in vars(module).items() if o in SOLVERS.values() and o.__module__ == module.__name__]
    for name in names:
        obj = getattr(module, name, None)
        if obj is None:
            raise AssertionError(f"{module.__name__}.__all__ names {name!r}, which the module does not define")
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield name, obj


@pytest.mark.parametrize("module_name", _public_modules())
def test_public_functions_and_classes_have_docstrings(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{module_name} needs an extra: {exc}")
    assert (module.__doc__ or "").strip(), f"module {module_name} has no docstring"
    missing = [
        f"{module_name}.{name}"
        for name, obj in _public_objects(module)
        # a class's own docstring, not one inherited from its base
        if not ((obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or "").strip()
    ]
    assert not missing, f"no docstring: {', '.join(missing)}"


def _rendered_api():
    """(modules rendered whole, {module: names} rendered with a members filter) of the
    ``::: module`` directives on the reference pages and of the solver hook."""
    whole, filtered = set(_load_hook().solver_modules()), {}
    for page in (DOCS / "reference").glob("*.md"):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            module = line[4:].strip()
            options = []
            for option in lines[i + 1 :]:
                if option and not option.startswith(" "):
                    break
                options.append(option.strip())
            if "members:" in options:
                start = options.index("members:") + 1
                names = [o[2:] for o in options[start:] if o.startswith("- ")]
                filtered.setdefault(module, set()).update(names)
            else:
                whole.add(module)
    return whole, filtered


def test_reference_pages_render_every_public_function_and_class():
    whole, filtered = _rendered_api()
    missing = []
    for module_name in _public_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in _public_objects(module):
            home = obj.__module__
            if home in whole or obj.__name__ in filtered.get(home, ()):
                continue
            missing.append(f"{home}.{obj.__name__}")
    assert not missing, f"not rendered on any reference page: {sorted(set(missing))}"


# -- the generated solver table ------------------------------------------------------------------
def test_solver_table_lists_every_solver_with_its_metadata():
    from ksampling import samplers

    hook = _load_hook()
    rows = {}
    for line in hook.solver_table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].split("`")[1]] = cells
    assert sorted(rows) == samplers.available()
    for name, cells in rows.items():
        meta = samplers.info(name)
        assert cells[1] == str(meta["order"]), name
        assert cells[2].split()[0] == str(meta["nfe_per_step"]), name
        assert cells[3] == meta["kind"].upper(), name
        assert all(option in cells[5] for option in meta["options"]), name


def test_every_page_is_in_the_nav():
    yaml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in yaml]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


# -- the site builds ---------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'ksampling[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    solvers_html = (tmp_path / "site" / "reference" / "solvers" / "index.html").read_text(encoding="utf-8")
    from ksampling import samplers

    for name in samplers.available():
        assert f"<code>{name}</code>" in solvers_html, f"solver {name} missing from the built reference"
