#!/usr/bin/env python3
"""Example document job for gpubot: extract the text of every PDF in a folder.

Standalone (python3; pypdf when importable, else a minimal built-in parser that reads the
uncompressed or Flate-compressed text operators of simple PDFs such as make_pdfs.py writes).
A GPU OCR variant (EasyOCR) is described in ../README.md.

Parameters (environment):
    GPUBOT_PARAM_SRC       folder with *.pdf (default: $GPUBOT_WORKSPACE/input)
    GPUBOT_PARAM_GENERATE  when set to N and the folder has no PDFs, first generate N sample
                           PDFs there (make_pdfs.py), so the job can be tried without data;
                           a folder named ``samples`` (the built-in template's default) with
                           no PDFs is filled with 6 generated PDFs the same way
    GPUBOT_PARAM_SHARDS, GPUBOT_PARAM_SHARD  split the sorted file list into SHARDS parts and
                           process part SHARD (0-based); default 1 and 0 (everything)
    GPUBOT_PARAM_STEP_SECONDS  sleep per file to make runs observable (default 0)

Writes into GPUBOT_RESULTS_DIR: ``text/<name>.txt`` per file and ``manifest.jsonl`` with one
``{"file", "pages", "status": "ok"|"error", "chars", "error"?}`` line per PDF (sorted by
name). Progress (step = files done) goes to GPUBOT_PROGRESS_FILE after every file.
Exit status: 0 when every PDF was extracted, 1 when some failed, 2 when there was no PDF.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _extract_pypdf(path: Path) -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return [page.extract_text() or "" for page in reader.pages]


_OBJ_RE = re.compile(rb"(\d+)\s+0\s+obj(.*?)endobj", re.S)
_STREAM_RE = re.compile(rb"<<(.*?)>>\s*stream\r?\n(.*?)\r?\nendstream", re.S)
_TEXT_RE = re.compile(rb"\(((?:\\.|[^\\)])*)\)\s*(Tj|'|\")|(T\*)|(-?\d+(?:\.\d+)?\s+-?\d+"
                      rb"(?:\.\d+)?\s+T[dD])")


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):  # backslash
            n = raw[i + 1]
            mapping = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("f"): 12}
            if n in mapping:
                out.append(mapping[n])
                i += 2
            elif 0x30 <= n <= 0x37:
                digits = re.match(rb"[0-7]{1,3}", raw[i + 1 : i + 4])
                assert digits is not None
                out.append(int(digits.group(0), 8) & 0xFF)
                i += 1 + len(digits.group(0))
            else:
                out.append(n)
                i += 2
        else:
            out.append(c)
            i += 1
    return out.decode("latin-1")


def _extract_minimal(path: Path) -> list[str]:
    """Text of each page, for simple PDFs (Type1 fonts, literal strings, no object streams)."""
    data = path.read_bytes()
    if not data.startswith(b"%PDF-"):
        raise ValueError("not a PDF")
    objects = {int(m.group(1)): m.group(2) for m in _OBJ_RE.finditer(data)}
    pages_text = []
    page_ids = [n for n, body in sorted(objects.items()) if re.search(rb"/Type\s*/Page\b", body)]
    if not page_ids:
        raise ValueError("no pages found")
    for pid in page_ids:
        refs = re.search(rb"/Contents\s+(\d+)\s+0\s+R", objects[pid])
        if refs is None:
            pages_text.append("")
            continue
        body = objects.get(int(refs.group(1)), b"")
        m = _STREAM_RE.search(body)
        if m is None:
            raise ValueError(f"content stream of page object {pid} not found")
        stream = m.group(2)
        if b"/FlateDecode" in m.group(1):
            stream = zlib.decompress(stream)
        lines: list[str] = []
        current = ""
        for tm in _TEXT_RE.finditer(stream):
            if tm.group(1) is not None:
                current += _unescape(tm.group(1))
            elif current:
                lines.append(current)
                current = ""
        if current:
            lines.append(current)
        pages_text.append("\n".join(lines))
    return pages_text


def extract_text(path: Path) -> list[str]:
    """Per-page text of ``path`` (pypdf when available, else the minimal parser)."""
    try:
        import pypdf  # noqa: F401
    except ImportError:
        return _extract_minimal(path)
    return _extract_pypdf(path)


def _write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> int:
    cwd = Path.cwd()
    workspace = Path(os.environ.get("GPUBOT_WORKSPACE") or cwd)
    src = Path(os.environ.get("GPUBOT_PARAM_SRC") or workspace / "input")
    if not src.is_absolute():
        src = workspace / src
    results = Path(os.environ.get("GPUBOT_RESULTS_DIR") or cwd / "results")
    progress_file = Path(os.environ.get("GPUBOT_PROGRESS_FILE") or cwd / "progress.json")
    step_seconds = float(os.environ.get("GPUBOT_PARAM_STEP_SECONDS") or 0)
    generate = os.environ.get("GPUBOT_PARAM_GENERATE")

    shards = max(1, int(os.environ.get("GPUBOT_PARAM_SHARDS") or 1))
    shard = int(os.environ.get("GPUBOT_PARAM_SHARD") or 0)
    if not 0 <= shard < shards:
        print(f"shard {shard} out of range for {shards} shards", file=sys.stderr)
        return 2

    pdfs = sorted(src.glob("*.pdf")) if src.is_dir() else []
    if not pdfs and (generate or src.name == "samples"):
        from make_pdfs import make_pdfs

        make_pdfs(src, int(generate or 6))
        pdfs = sorted(src.glob("*.pdf"))
    pdfs = pdfs[shard::shards]
    if not pdfs:
        print(f"no PDF files in {src}" + (f" for shard {shard}/{shards}" if shards > 1 else ""),
              file=sys.stderr)
        return 2

    (results / "text").mkdir(parents=True, exist_ok=True)
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    total_chars = 0
    entries = []
    for done, pdf in enumerate(pdfs, start=1):
        entry: dict[str, object] = {"file": pdf.name}
        try:
            pages = extract_text(pdf)
            text = "\n\f\n".join(pages)
            (results / "text" / f"{pdf.stem}.txt").write_text(text, encoding="utf-8")
            entry.update(pages=len(pages), status="ok", chars=len(text))
            total_chars += len(text)
        except Exception as e:  # noqa: BLE001 - a bad file must not stop the batch
            failures += 1
            entry.update(pages=0, status="error", chars=0, error=f"{type(e).__name__}: {e}")
        entries.append(entry)
        print(f"[{done}/{len(pdfs)}] {pdf.name}: {entry['status']}", flush=True)
        _write_json_atomic(
            progress_file,
            {
                "epoch": 0,
                "step": done,
                "total_steps": len(pdfs),
                "metrics": {"files_failed": failures, "chars": total_chars},
                "timestamp": datetime.now(timezone.utc).isoformat(),  # noqa: UP017
            },
        )
        if step_seconds > 0:
            time.sleep(step_seconds)
    with open(results / "manifest.jsonl", "w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
    print(f"extracted {len(pdfs) - failures}/{len(pdfs)} files, {total_chars} chars", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
