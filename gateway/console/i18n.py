"""The console's one message catalogue (catalogue.toml): Japanese first, English beside it.

Every string a page shows comes from here by key; a key missing in either language is an
error at load time (`load_catalogue`), and a key a template asks for that does not exist
raises while rendering, so a test that renders every page in both languages finds it.
The language: the `lang` cookie (set by the switch in the header), else the browser's
Accept-Language, else Japanese.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"
CATALOGUE = Path(__file__).with_name("catalogue.toml")


class MissingMessage(KeyError):
    """A template asked for a key the catalogue does not have."""


@cache
def load_catalogue(path: Path = CATALOGUE) -> dict[str, dict[str, str]]:
    """language → key → text; both languages must have exactly the same keys."""
    data = tomllib.loads(path.read_text("utf-8"))
    tables = {lang: {str(k): str(v) for k, v in data[lang].items()} for lang in LANGUAGES}
    ja, en = set(tables["ja"]), set(tables["en"])
    if ja != en:
        raise ValueError(f"catalogue keys differ: only ja {sorted(ja - en)}, "
                         f"only en {sorted(en - ja)}")
    return tables


def translator(lang: str) -> Translate:
    return Translate(load_catalogue()[lang if lang in LANGUAGES else DEFAULT_LANGUAGE])


class Translate:
    """`t("key", name=value)`: the text for `key`, with `{name}` filled in."""

    def __init__(self, table: dict[str, str]) -> None:
        self._table = table

    def __call__(self, key: str, **values: object) -> str:
        try:
            text = self._table[key]
        except KeyError:
            raise MissingMessage(key) from None
        return text.format(**values) if values else text


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    """The cookie's language, else the first supported one the browser lists, else ja."""
    if cookie in LANGUAGES:
        return cookie
    for item in (accept_language or "").split(",")[:20]:
        code = item.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE
