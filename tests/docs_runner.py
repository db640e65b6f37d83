"""Run the Python code blocks of a documentation page and check the output they show.

The rules (also on the docs page "Writing these docs"):

* Every fenced block whose info string starts with ``python`` (or ``py``) runs. The blocks
  of one page run in order, in one namespace; every page starts from a fresh namespace.
* A fenced ``text`` (or ``output``) block that follows a Python block, with only blank lines
  or ``docs-test`` comments between them, is that block's expected standard output. It must
  equal what the block printed, line by line (trailing spaces and trailing blank lines
  ignored). Format numbers in the code (``f"{x:.4f}"``) so that the output is stable.
* ``<!-- docs-test: tolerance 1e-3 -->`` just before an output block compares its numbers
  with that absolute tolerance (``|got − shown| <= tol``);
  ``<!-- docs-test: tolerance rel 0.1 -->`` compares them relatively
  (``|got − shown| <= tol · |shown|``). The text around the numbers must still match
  exactly. For Monte Carlo numbers that could move in the last digit with another CPU or
  BLAS, and for errors of solvers that other people may still refine.
* ``<!-- docs-test: skip -->`` just before a block: do not run it. Only for shell commands
  (which are not Python blocks anyway), GPU-only code and ``torchrun``.
* ``<!-- docs-test: requires ksampling.schedules.karras, ... -->`` anywhere in a page: the
  page is skipped (with that reason) while one of the named objects does not exist yet.

Use from the command line to see what a page prints::

    python tests/docs_runner.py docs/getting-started.md
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<word>[a-z-]+)\s*(?P<arg>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
CODE_LANGS = ("python", "py")
OUTPUT_LANGS = ("text", "output")


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    skip: bool = False
    tolerance: tuple[str, float] | None = None  # ("abs" | "rel", value)
    expected: "Block | None" = None  # the output block that follows a code block


@dataclass
class Page:
    path: Path
    requires: list[str] = field(default_factory=list)
    code: list[Block] = field(default_factory=list)


class DocsError(AssertionError):
    """A block failed or printed something other than what the page shows."""


def parse(path: str | Path, text: str | None = None) -> Page:
    """Split a Markdown page into its code blocks, their expected outputs and the directives."""
    path = Path(path)
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    page = Page(path)
    blocks: list[Block] = []
    pending: dict[str, object] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        if directive:
            word, arg = directive["word"], directive["arg"]
            if word == "requires":
                page.requires += [name.strip() for name in arg.split(",") if name.strip()]
            elif word == "skip":
                pending["skip"] = True
            elif word == "tolerance":
                words = arg.split()
                kind = words.pop(0) if words and words[0] in ("abs", "rel") else "abs"
                try:
                    (value,) = words
                    pending["tolerance"] = (kind, float(value))
                except ValueError:
                    raise ValueError(f"{path}:{i + 1}: write 'tolerance [abs|rel] NUMBER', got {arg!r}") from None
            else:
                raise ValueError(f"{path}:{i + 1}: unknown docs-test directive {word!r}")
            i += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip():
                pending.clear()
            i += 1
            continue
        indent, marker = fence["indent"], fence["fence"]
        lang = (fence["info"].split() or [""])[0].lower()
        body, j = [], i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(marker[0] * len(marker)) and not lines[j].strip().strip(marker[0])
        ):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        block = Block(lang, "\n".join(body) + "\n", i + 1, bool(pending.get("skip")), pending.get("tolerance"))
        if lang in OUTPUT_LANGS and blocks and blocks[-1].lang in CODE_LANGS and _adjacent(lines, blocks[-1], i):
            blocks[-1].expected = block
        blocks.append(block)
        pending.clear()
        i = j + 1
    page.code = [b for b in blocks if b.lang in CODE_LANGS]
    return page


def _adjacent(lines: list[str], previous: Block, start: int) -> bool:
    """Only blank lines and directives between the end of ``previous`` and line ``start``."""
    end = previous.line + previous.text.count("\n")  # the closing fence (0-based index)
    between = lines[end + 1 : start]
    return all(not ln.strip() or DIRECTIVE.match(ln) for ln in between)


def missing_requirements(page: Page) -> list[str]:
    """The ``requires`` names that cannot be imported yet."""
    missing = []
    for name in page.requires:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(name)
            continue
        except ImportError:
            pass
        try:
            module = importlib.import_module(module_name)
            getattr(module, attr)
        except (ImportError, AttributeError, ValueError):
            missing.append(name)
    return missing


def _normalise(text: str) -> list[str]:
    out = [line.rstrip() for line in text.splitlines()]
    while out and not out[-1]:
        out.pop()
    return out


def outputs_match(got: str, shown: str, tolerance: tuple[str, float] | None) -> bool:
    """Whether ``got`` equals ``shown`` (numbers within ``tolerance`` when given)."""
    got_lines, shown_lines = _normalise(got), _normalise(shown)
    if tolerance is None:
        return got_lines == shown_lines
    if len(got_lines) != len(shown_lines):
        return False
    for g, s in zip(got_lines, shown_lines):
        if NUMBER.sub("#", g) != NUMBER.sub("#", s):
            return False
        kind, tol = tolerance
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(s)):
            a, b = float(a), float(b)
            allowed = tol * abs(b) if kind == "rel" else tol
            if not abs(a - b) <= allowed:
                return False
    return True


def run_page(page: Page, *, show: bool = False) -> float:
    """Run the page's blocks in one fresh namespace; raise :class:`DocsError` on the first
    failure or mismatch. Returns the seconds it took."""
    import torch

    namespace: dict[str, object] = {"__name__": "__docs__"}
    default_dtype = torch.get_default_dtype()
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    # The examples are small: one thread is fastest, and on a loaded CI machine several
    # threads of tiny ops can be forty times slower.
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        for block in page.code:
            if block.skip:
                continue
            where = f"{page.path}:{block.line}"
            stdout = io.StringIO()
            try:
                code = compile(block.text, where, "exec")
                with contextlib.redirect_stdout(stdout):
                    exec(code, namespace)
            except Exception as exc:  # noqa: BLE001 - reported with the page and line
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                raise DocsError(f"the code block at {where} raised:\n{tb}\nit printed:\n{stdout.getvalue()}") from exc
            if show:
                print(f"--- {where}\n{stdout.getvalue()}", end="")
            if block.expected is not None and not outputs_match(
                stdout.getvalue(), block.expected.text, block.expected.tolerance
            ):
                tol = f" (tolerance {block.expected.tolerance})" if block.expected.tolerance else ""
                raise DocsError(
                    f"the code block at {where} printed\n{stdout.getvalue()}\n"
                    f"but the page shows{tol}\n{block.expected.text}"
                )
    finally:
        # A page must not leak global state into the next one.
        torch.set_default_dtype(default_dtype)
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(threads)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    status = 0
    for name in argv or sorted(str(p) for p in Path("docs").rglob("*.md")):
        page = parse(name)
        if not page.code:
            continue
        missing = missing_requirements(page)
        if missing:
            print(f"SKIP {name}: needs {', '.join(missing)}")
            continue
        try:
            seconds = run_page(page, show=len(argv) > 0)
            print(f"ok   {name} ({len(page.code)} blocks, {seconds:.1f} s)")
        except DocsError as exc:
            print(f"FAIL {name}\n{exc}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
