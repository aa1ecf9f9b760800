"""
The tree refers only to what exists: every module names its test module (the C{test-case-name}
header that trial and editors follow), and every path that code, tests and docs mention is a file
of this repository.  A reference to a file that was renamed or never written misleads the next
reader more than no reference at all.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import PROJECT_ROOT

_HEADER = re.compile(r"#\s*-\*-\s*test-case-name:\s*([\w.,]+)\s*-\*-")
_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|tests|benchmarks|mission_control)/[\w./-]*\.(?:md|py|js|css|html|png))")
#: Documents that are not part of this repository, and so must not be pointed at from it.
_OUTSIDE = re.compile(r"\b(?:CONTRACT|DESIGN)(?:\.md| section)")


def _files(top: str, suffixes: tuple[str, ...]) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(os.path.join(PROJECT_ROOT, top)):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "vendor", "images")]
        found += [os.path.join(folder, f) for f in files if f.endswith(suffixes)]
    return sorted(found)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _relative(path: str) -> str:
    return os.path.relpath(path, PROJECT_ROOT)


class ReferenceTests(SynchronousTestCase):
    """Headers and paths point at files that exist."""

    def test_every_module_names_an_existing_test_module(self):
        """
        Each module of the package (but a package's __init__) has a test-case-name header, and
        every test module it names exists.
        """
        problems = []
        for path in _files("mission_control", (".py",)):
            if os.path.basename(path) == "__init__.py":
                continue
            match = _HEADER.search(_read(path)[:300])
            if match is None:
                problems.append(f"{_relative(path)}: no test-case-name header")
                continue
            for name in match.group(1).split(","):  # trial takes a comma-separated list
                target = os.path.join(PROJECT_ROOT, *name.split(".")) + ".py"
                if not os.path.exists(target):
                    problems.append(f"{_relative(path)}: names {name}, which does not exist")
        self.assertEqual(problems, [])

    def test_every_mentioned_path_exists(self):
        """
        A path of this repository written in code, tests, benchmarks, docs or the README is a
        file that exists.
        """
        sources = (_files("mission_control", (".py", ".js", ".html", ".css"))
                   + _files("tests", (".py",)) + _files("benchmarks", (".py", ".md"))
                   + _files("docs", (".md",)) + [os.path.join(PROJECT_ROOT, "README.md")])
        missing = []
        for path in sources:
            for mentioned in set(_PATH.findall(_read(path))):
                if not os.path.exists(os.path.join(PROJECT_ROOT, mentioned.rstrip("."))):
                    missing.append(f"{_relative(path)} mentions {mentioned}")
        self.assertEqual(sorted(missing), [])

    def test_nothing_points_outside_the_repository(self):
        """No code, test or doc refers a reader to a document this repository does not hold."""
        sources = (_files("mission_control", (".py", ".js")) + _files("tests", (".py",))
                   + _files("docs", (".md",)) + [os.path.join(PROJECT_ROOT, "README.md")])
        found = [f"{_relative(path)}: {match.group(0)}" for path in sources
                 for match in _OUTSIDE.finditer(_read(path))
                 if path != os.path.abspath(__file__)]
        self.assertEqual(found, [])
