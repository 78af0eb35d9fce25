"""Reading release tables in chunks: tab-separated text (fast typed parse, exact error lines) and .xlsx sheets.

Both yield `(chunk, lines)`: a DataFrame whose columns carry the reader's own names, and int64 [n] the line
(text, 1-based as an editor counts, header included) or sheet row (xlsx) of each chunk row. Text cells of the
wanted text columns come as categoricals (few distinct strain ids in millions of rows), numeric columns as
float64 when the fast parse succeeds, else as text for `table.numeric_values`, which locates the bad cell.
Headers are matched after `canonical_header` (Greek ε / τ or the spelled-out words, runs of spaces).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .table import MISSING_TOKENS, GenotypeFileError, category_codes, numeric_values

CHUNK_ROWS = 1_000_000  # rows per text chunk: a few hundred MB of transient strings at most
XLSX_SUFFIXES = (".xlsx", ".xlsm")
HEADER_SEARCH_ROWS = 10  # a release table may start with a title row or two before its header
Hint = Callable[[set], str] | None  # canonical header cells of a refused header -> advice appended to the error


def canonical_header(name: object) -> str:
    """Header text compared between releases: ε -> epsilon, τ -> tau, whitespace collapsed."""
    text = str(name).replace("ε", "epsilon").replace("τ", "tau")
    return " ".join(text.split())


def is_xlsx(path: str | Path) -> bool:
    return Path(path).suffix.lower() in XLSX_SUFFIXES


def _header_map(cells: Sequence[object], wanted: Mapping[str, str]) -> dict[str, str] | None:
    """{our name: the header cell as written} when every wanted header is among `cells`, else None."""
    found = {canonical_header(c): c for c in cells if c is not None}
    if all(canonical_header(h) in found for h in wanted.values()):
        return {name: found[canonical_header(h)] for name, h in wanted.items()}
    return None


def _missing_header_error(path: str | Path, cells: Sequence[object], wanted: Mapping[str, str], line: int,
                          unit: str, hint: Hint) -> GenotypeFileError:
    have = {canonical_header(c) for c in cells if c is not None}
    missing = next(h for h in wanted.values() if canonical_header(h) not in have)
    shown = ", ".join(repr(str(c)) for c in cells if c is not None and str(c) != "")
    advice = hint(have) if hint else ""
    return GenotypeFileError(path, f"missing column {missing!r} (header has {shown}){advice}", line, unit=unit)


# ---- tab-separated text -------------------------------------------------------------------------------------
def read_text_header(path: str | Path, wanted: Mapping[str, str], title_rows: int = 0,
                     hint: Hint = None) -> tuple[int, dict[str, str]]:
    """(1-based header line, {our name: header cell}); the header is line 1 or, with title_rows > 0, the
    first of the first title_rows + 1 lines holding every wanted column."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    first_cells: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for line_no in range(1, title_rows + 2):
                cells = handle.readline().rstrip("\r\n").split("\t")
                first_cells = first_cells or cells
                mapping = _header_map(cells, wanted)
                if mapping is not None:
                    return line_no, mapping
    except UnicodeDecodeError as exc:
        raise GenotypeFileError(path, f"not UTF-8 text ({exc})") from exc
    raise _missing_header_error(path, first_cells, wanted, 1, "line", hint)


def read_text_chunks(path: str | Path, header_line: int, columns: Mapping[str, str], text: Sequence[str],
                     numeric: Sequence[str], chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Chunks of a tab-separated file: `columns` maps our names to header cells; `text` columns come as
    categoricals, `numeric` ones as float64 (or as text after a value the fast parse refuses)."""
    raw_names = {header: name for name, header in columns.items()}
    done = 0  # data rows yielded so far
    try:
        for chunk in _pandas_chunks(path, header_line, columns, text, numeric, chunk_rows, typed=True, skip=0):
            yield chunk.rename(columns=raw_names), header_line + 1 + done + np.arange(len(chunk), dtype=np.int64)
            done += len(chunk)
        return
    except GenotypeFileError:
        raise
    except ValueError:  # a cell the typed parse refused: go on as text from the failing chunk
        pass
    for chunk in _pandas_chunks(path, header_line, columns, text, numeric, chunk_rows, typed=False, skip=done):
        yield chunk.rename(columns=raw_names), header_line + 1 + done + np.arange(len(chunk), dtype=np.int64)
        done += len(chunk)


def _pandas_chunks(path, header_line, columns, text, numeric, chunk_rows, typed: bool, skip: int):
    # Every column is read (no usecols: with it pandas would silently ignore a row's surplus fields); columns
    # the reader does not use come as text.
    dtype = {cell: str for cell in _header_cells(path, header_line)}
    dtype.update({columns[n]: "category" for n in text})
    dtype.update({columns[n]: ("float64" if typed else str) for n in numeric})
    options = dict(sep="\t", dtype=dtype, keep_default_na=False, skip_blank_lines=False, quoting=csv.QUOTE_NONE,
                   encoding="utf-8-sig", chunksize=chunk_rows, low_memory=False)
    if typed:
        options["na_values"] = {columns[n]: sorted(MISSING_TOKENS) for n in numeric}
    else:
        options["na_filter"] = False
    if skip:  # restart after `skip` data rows: skip the lines up to them, name the columns ourselves
        options.update(header=None, names=_header_cells(path, header_line), skiprows=header_line + skip)
    else:
        options.update(header=0, skiprows=header_line - 1)
    try:
        with pd.read_csv(path, **options) as reader:
            yield from reader
    except UnicodeDecodeError as exc:
        raise GenotypeFileError(path, f"not UTF-8 text ({exc})") from exc
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from exc


def _header_cells(path: str | Path, header_line: int) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for _ in range(header_line - 1):
            handle.readline()
        return handle.readline().rstrip("\r\n").split("\t")


def _parser_error(path: str | Path, exc: Exception) -> GenotypeFileError:
    """pandas' tokenizer message ("Expected 11 fields in line 7, saw 12") with the file named."""
    match = re.search(r"in line (\d+)", str(exc))
    return GenotypeFileError(path, f"cannot parse as tab-separated text ({str(exc).strip()})",
                             int(match.group(1)) if match else None)


# ---- xlsx ---------------------------------------------------------------------------------------------------
def read_xlsx_chunks(path: str | Path, wanted: Mapping[str, str], text: Sequence[str], numeric: Sequence[str],
                     chunk_rows: int = 200_000, hint: Hint = None) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Chunks of the first sheet of an .xlsx workbook, streamed (openpyxl read-only mode); the header is the
    first of the first HEADER_SEARCH_ROWS rows holding every wanted column (title rows above it are skipped)."""
    from openpyxl import load_workbook

    if not Path(path).is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile / KeyError / InvalidFileException for non-workbooks
        raise GenotypeFileError(path, f"cannot open as an .xlsx workbook ({type(exc).__name__}: {exc})") from exc
    try:
        rows = enumerate(book.worksheets[0].iter_rows(values_only=True), start=1)  # empty rows included
        positions, first_cells = None, None
        for row_no, cells in rows:
            mapping = _header_map(cells, wanted)
            if mapping is not None:
                index = {c: i for i, c in enumerate(cells)}
                positions = {name: index[header] for name, header in mapping.items()}
                break
            first_cells = first_cells if first_cells is not None else cells
            if row_no >= HEADER_SEARCH_ROWS:
                break
        if positions is None:
            raise _missing_header_error(path, first_cells or (), wanted, 1, "row", hint)
        yield from _xlsx_row_chunks(rows, positions, text, numeric, chunk_rows)
    finally:
        book.close()


def _xlsx_row_chunks(rows, positions: Mapping[str, int], text, numeric, chunk_rows):
    names = list(positions)
    take = [positions[n] for n in names]
    buffer: list[tuple] = []
    lines: list[int] = []

    def flush():
        frame = pd.DataFrame.from_records(buffer, columns=names)
        for name in text:
            frame[name] = frame[name].map(_cell_text).astype("category")
        for name in numeric:
            frame[name] = frame[name].astype(object)
        return frame, np.asarray(lines, dtype=np.int64)

    for row_no, cells in rows:
        width = len(cells)
        buffer.append(tuple(cells[i] if i < width else None for i in take))
        lines.append(row_no)
        if len(buffer) >= chunk_rows:
            yield flush()
            buffer, lines = [], []
    if buffer:
        yield flush()


def _cell_text(value: object) -> str:
    """An xlsx text cell as text: empty cells (None, NaN after pandas) as ""."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def blank_rows(chunk: pd.DataFrame, text: Sequence[str], text_codes: Mapping[str, np.ndarray],
               numeric_values: Mapping[str, np.ndarray]) -> np.ndarray:
    """bool [n]: rows without any cell (every text cell empty, every number missing)."""
    blank = np.ones(len(chunk), dtype=bool)
    for name in text:
        blank &= text_codes[name] < 0
    for values in numeric_values.values():
        blank &= np.isnan(values)
    return blank


class ReleaseRows:
    """The rows of a screen release read so far, kept as per-chunk arrays, and the steps its readers share: rows
    and blank lines counted per file, numeric columns parsed (a bad cell is one error naming its line or sheet
    row), blank lines dropped, parts concatenated. A reader subclass sets the columns and adds its own arrays.
    """
    TEXT: Mapping[str, str] = {}  # our name -> release header, read as text (categoricals)
    NUMERIC: Mapping[str, str] = {}  # our name -> release header, read as float64
    EMPTY_TYPES: Mapping[str, type] = {}  # dtype of every non-numeric part, for a file set without data rows

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.stats: dict = {"rows_read": 0, "blank_lines": 0, "rows_by_file": {}}
        self.unit = "line"  # "row" once an .xlsx sheet was read

    def read_chunks(self, index: int, path: str, chunks: Iterator[tuple[pd.DataFrame, np.ndarray]]) -> None:
        before = self.stats["rows_read"] - self.stats["blank_lines"]
        for chunk, lines in chunks:
            self.add_chunk(index, path, chunk, lines)
        self.stats["rows_by_file"][path] = self.stats["rows_read"] - self.stats["blank_lines"] - before

    def add_chunk(self, index: int, path: str, chunk: pd.DataFrame, lines: np.ndarray) -> None:
        raise NotImplementedError

    def parse(self, path: str, chunk: pd.DataFrame, lines: np.ndarray):
        """(text {name: (codes, categories)}, numeric {name: float64}, lines, error(row, problem, value)) of the
        chunk's non-blank rows."""
        self.stats["rows_read"] += len(chunk)
        text = {name: category_codes(chunk[name]) for name in self.TEXT}
        values = {}
        for name, header in self.NUMERIC.items():
            values[name], bad = numeric_values(chunk[name])
            if bad.any():
                row = int(np.argmax(bad))
                raise GenotypeFileError(path, f"non-numeric value in column {header!r}", int(lines[row]),
                                        chunk[name].iat[row], self.unit)
        blank = blank_rows(chunk, list(self.TEXT), {n: c for n, (c, _) in text.items()}, values)
        self.stats["blank_lines"] += int(blank.sum())
        kept = np.flatnonzero(~blank)
        lines = lines[kept]

        def error(row: int, problem: str, value: object = None) -> GenotypeFileError:
            return GenotypeFileError(path, problem, int(lines[row]), value, self.unit)

        return ({name: (codes[kept], cats) for name, (codes, cats) in text.items()},
                {name: v[kept] for name, v in values.items()}, lines, error)

    def append(self, part: Mapping[str, np.ndarray]) -> None:
        for name, array_part in part.items():
            self.parts.setdefault(name, []).append(array_part)

    def concatenated(self) -> dict[str, np.ndarray]:
        """Every part concatenated (and released); typed empty arrays when no data row was read."""
        if not self.parts:
            return {**{name: np.zeros(0, dtype=t) for name, t in self.EMPTY_TYPES.items()},
                    **{name: np.zeros(0) for name in self.NUMERIC}}
        out = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        self.parts = {}
        return out
