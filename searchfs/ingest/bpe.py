"""CLIP's byte-pair tokenizer without torch or open_clip: what `open_clip.SimpleTokenizer` does by default.

The cold text query cannot afford `import open_clip` (1.7 s, and it imports torch), so this reads
open_clip's bundled vocabulary file where the package is installed (found with `importlib.util.find_spec`,
which does not run the package) and applies the same rules: ftfy + double HTML unescape, whitespace
collapsed, lower case (ftfy is not even imported for printable ASCII without '&', which it leaves as it
is); the same split pattern (the `regex` module, for `\\p{L}`/`\\p{N}`); the same merges;
`<start_of_text>` ... `<end_of_text>`, cut to the context length with the end token kept last. Only this
default ("lower" clean, no reduction mask) is supported; the text tower's export checks that a model uses
it. tests/test_text_tower.py compares the ids with open_clip's on a list of awkward texts and on random
ones.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import threading
from functools import lru_cache

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges open_clip reads from the file (its first line is a header)
SPECIALS = ("<start_of_text>", "<end_of_text>")


def vocab_path() -> str | None:
    """open_clip's bundled vocabulary file, located without importing open_clip; None if not installed."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, VOCAB_NAME)
        if os.path.isfile(path):
            return path
    return None


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the BPE works on these characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clean(text: str) -> str:
    """open_clip's "lower" clean: ftfy, HTML entities twice, whitespace collapsed, lower case."""
    if not _ftfy_leaves_as_is(text):
        import ftfy  # 0.1 s to import: most query texts never need it

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _ftfy_leaves_as_is(text: str) -> bool:
    """Printable ASCII without '&': every fix ftfy.fix_text makes needs a non-ASCII character (mojibake,
    quotes, ligatures, widths), a control character (terminal escapes, line breaks, controls) or an HTML
    entity, and NFC leaves ASCII as it is. tests/test_text_tower.py checks this against ftfy itself."""
    return text.isascii() and text.isprintable() and "&" not in text


class Tokenizer:
    def __init__(self, path: str, context_length: int = 77):
        import regex

        merges = _merge_lines(path)  # "a b": two symbols, which never hold a space (bytes_to_unicode)
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + list(SPECIALS)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.ranks = dict(zip(merges, range(len(merges))))  # keyed by the line itself: no tuple per merge
        self.sot, self.eot = self.encoder[SPECIALS[0]], self.encoder[SPECIALS[1]]
        self.context_length = context_length
        self._bytes = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._pattern = regex.compile(
            "|".join(SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with start and end tokens, at most `context_length` of them."""
        ids = [self.sot]
        for word in self._pattern.findall(clean(text)):
            ids += self._word(word)
        ids.append(self.eot)
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self.eot
        return ids

    def _word(self, word: str) -> list[int]:
        with self._lock:
            known = self._cache.get(word)
        if known is None:
            if word in SPECIALS:
                known = [self.encoder[word]]
            else:
                chars = "".join(self._bytes[b] for b in word.encode("utf-8"))
                known = [self.encoder[part] for part in self._merge(chars)]
            with self._lock:
                self._cache[word] = known
        return known

    def _merge(self, chars: str) -> list[str]:
        """Apply the merges, lowest rank first, until none applies (the last symbol carries `</w>`)."""
        word = [*chars[:-1], chars[-1] + "</w>"]
        ranks, never = self.ranks, len(self.ranks)
        while len(word) > 1:
            pairs = {f"{a} {b}" for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda pair: ranks.get(pair, never))
            if best not in ranks:
                break
            first, second = best.split(" ")
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word


def _merge_lines(path: str) -> list[str]:
    """The MERGES merge lines after the header, decompressing only as far as they go: they are the first
    fifth of the file (the rest is never read; parsing all of it cost a cold query 0.1 s)."""
    chunks, lines = [], 0
    with gzip.open(path) as handle:
        while lines <= MERGES and (chunk := handle.read(1 << 16)):
            chunks.append(chunk)
            lines += chunk.count(b"\n")
    data = b"".join(chunks)
    end = data.rfind(b"\n")  # whole lines only: no character cut in two
    return data[: max(end, 0)].decode("utf-8").split("\n", MERGES + 1)[1 : MERGES + 1]


_TOKENIZERS: dict[tuple[str, int], Tokenizer] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer(context_length: int = 77) -> Tokenizer | None:
    """The shared tokenizer (the vocabulary is parsed once per process); None without open_clip's file."""
    path = vocab_path()
    if path is None:
        return None
    with _TOKENIZERS_LOCK:
        key = (path, context_length)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = Tokenizer(path, context_length)
        return _TOKENIZERS[key]
