"""Sentences for the SSL corpus: ~5,700 plain English sentences from the Python documentation.

Source: the CPython 3.11 documentation topics (`pydoc_data.topics`) and the docstrings of the standard
library modules, Copyright (c) 2001-2023 Python Software Foundation, distributed under the PSF License
Agreement version 2 (permissive: use, copy and redistribute with the copyright notice kept). They are
shipped, extracted once, in `kanade_stream/data/python_docs_sentences.txt`, so that the corpus does not
depend on the Python version installed; `extract_python_doc_sentences()` regenerates the list:

    python -m kanade_stream.voices.text > kanade_stream/data/python_docs_sentences.txt

Kept: sentences of 6-22 words made of letters and plain punctuation, no code, no abbreviations, no
duplicates. The Harvard sentences (held out for evaluation) are not among them (tests check it on a few).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from ..corpus import read_sentences

DOCS_SENTENCES_FILE = Path(__file__).resolve().parent.parent / "data" / "python_docs_sentences.txt"
HEADER = """\
# Plain English sentences from the CPython 3.11 documentation (pydoc_data.topics) and standard-library
# docstrings. Copyright (c) 2001-2023 Python Software Foundation; PSF License Agreement version 2.
# Regenerate with: python -m kanade_stream.voices.text
"""
_PLAIN = re.compile(r"^[A-Z][A-Za-z ,;'\-]+[a-z][.?!]$")
_SKIP_DIRS = ("test/", "idlelib/idle_test", "lib2to3/tests", "site-packages", "tkinter/test", "unittest/test",
              "ctypes/test", "distutils/tests")


def extract_python_doc_sentences() -> list[str]:
    import sysconfig
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if path.relative_to(stdlib).as_posix().startswith(_SKIP_DIRS):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    text = re.sub(r"\s+", " ", "\n".join(texts))
    out, seen = [], set()
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        s = s.strip()
        words = s.split()
        if not 6 <= len(words) <= 22 or not _PLAIN.match(s):
            continue
        if any(len(w) > 14 or w.count("-") > 1 or w.endswith("-") for w in words):
            continue
        if re.search(r"\b(e\.g|i\.e|etc)\b|--|''", s) or s.lower() in seen:
            continue
        seen.add(s.lower())
        out.append(s)
    return out


def corpus_sentences() -> list[str]:
    """The SSL corpus's sentences: the shipped Python-docs list, then the embedded corpus's 271."""
    from ..corpus import SENTENCES

    docs = read_sentences(DOCS_SENTENCES_FILE)
    seen = set(s.lower() for s in docs)
    return docs + [s for s in SENTENCES if s.lower() not in seen]


if __name__ == "__main__":
    sys.stdout.write(HEADER + "".join(s + "\n" for s in extract_python_doc_sentences()))
