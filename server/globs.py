"""Room and variable-name globs ("project-*", "☁ reply*"): one compiler for every setting."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


def compile_glob(pattern: str) -> re.Pattern:
    """A pattern matching whole strings (use `fullmatch`) like the shell glob `pattern`;
    `*` matches newlines too."""
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


def compile_globs(patterns: Iterable[str]) -> re.Pattern:
    """One pattern matching any of `patterns` (none: matches nothing)."""
    sources = [fnmatch.translate(pattern) for pattern in patterns]
    return re.compile("|".join(sources) if sources else "(?!)", re.DOTALL)
