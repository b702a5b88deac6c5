"""The third-party libraries that change text (ftfy, OpenCC, tokenizers): their versions, for ``prov``, and
OpenCC's start-up check.

A library release that rewrites text wrongly would rewrite a whole corpus without a trace, so (issue 12):

* ``pyproject.toml`` excludes the OpenCC releases known to corrupt text (:data:`OPENCC_BAD_RELEASES`);
* :func:`t2s_converter` refuses those releases and, whatever the version, converts a few probe sentences
  before any corpus text and refuses a converter that gets one wrong, so a bad environment fails loudly;
* :func:`versions` names the releases that made a record, for its ``prov``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

# Releases seen to corrupt Simplified text in Traditional -> Simplified conversion: 1.3.2 and 1.4.0 turn 坏
# into 坯 (checked with `OpenCC("t2s").convert` on each release from PyPI, issue 12). Keep in step with the
# exclusions of the `opencc` requirement in pyproject.toml.
OPENCC_BAD_RELEASES = ("1.3.2", "1.4.0")

# (input, right output) of every Traditional -> Simplified config (t2s, tw2s, hk2s, tw2sp): Simplified text
# stays as it is; common Traditional characters become their Simplified forms.
T2S_PROBES = (
    ("这台电脑坏了，我们只好把坏掉的零件换掉。", "这台电脑坏了，我们只好把坏掉的零件换掉。"),
    ("后来我们发现头发是干净的。", "后来我们发现头发是干净的。"),
    ("這臺電腦壞了，後來我們發現頭髮是乾淨的。", "这台电脑坏了，后来我们发现头发是干净的。"),
)


class TextLibraryError(RuntimeError):
    """A text-changing library that would corrupt text: a known-bad release, or a failed probe."""


def version(package: str) -> str:
    """The installed release of ``package`` ("" when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def versions(*packages: str) -> dict[str, str]:
    """``{package: release}`` of the installed ``packages``, for a record's ``prov``."""
    return {p: version(p) for p in packages}


def t2s_converter(config: str = "t2s") -> Callable[[str], str]:
    """OpenCC's ``convert`` for ``config`` (``t2s``, ``tw2s``, ``hk2s``, ``tw2sp``; a ``.json`` suffix is
    allowed), checked before use.

    Raises :class:`TextLibraryError` for a release in :data:`OPENCC_BAD_RELEASES`, or when the converter
    turns a probe of :data:`T2S_PROBES` into anything but its right output; the message names the release,
    the probe and what came out.
    """
    import opencc

    release = version("opencc")
    excluded = ",".join(f"!={v}" for v in OPENCC_BAD_RELEASES)
    fix = f"install a good release: pip install 'opencc>=1.1.9,<2,{excluded}'"
    if release in OPENCC_BAD_RELEASES:
        raise TextLibraryError(
            f"OpenCC {release} is a release known to corrupt Simplified text (坏 -> 坯); {fix}"
        )
    name = config.removesuffix(".json")
    convert = opencc.OpenCC(name).convert
    for text, right in T2S_PROBES:
        got = convert(text)
        if got != right:
            raise TextLibraryError(
                f"OpenCC {release} ({name}) converts {text!r} to {got!r}, not {right!r}: it would rewrite "
                f"the corpus wrongly; {fix}"
            )
    return convert
