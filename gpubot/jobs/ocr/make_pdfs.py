#!/usr/bin/env python3
"""Generate small, deterministic text PDFs (1-3 pages each) with no third-party library.

Usage: ``python3 make_pdfs.py OUT_DIR [COUNT]`` (default 6). The PDFs are valid PDF 1.4
(Helvetica, one uncompressed content stream per page, a correct xref table), so any reader,
pypdf included, can extract their text. ``expected_pages(i)`` gives the text of document i.
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = (
    "gpu rental checkpoint resume budget slack thread progress loss epoch instance offer "
    "interruptible on-demand results upload archive workspace manifest token batch"
).split()


def expected_pages(index: int) -> list[list[str]]:
    """The lines of each page of document ``index`` (1 to 3 pages, deterministic)."""
    pages = []
    for page in range(1 + index % 3):
        lines = [f"Document {index} page {page + 1}"]
        for line in range(3):
            start = (index * 7 + page * 5 + line * 3) % len(WORDS)
            lines.append(" ".join(WORDS[(start + k) % len(WORDS)] for k in range(6)))
        pages.append(lines)
    return pages


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A PDF with one page per entry of ``pages``, each line drawn as a text line (ASCII)."""
    objects: list[bytes] = []  # object i+1
    n_pages = len(pages)
    font_id = 3
    page_ids = [4 + 2 * i for i in range(n_pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {content_id} 0 R >>"
            ).encode()
        )
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = ("\n".join(ops) + "\n").encode("latin-1")
        objects.append(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"endstream"
        )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"\
        .encode()
    return bytes(out)


def make_pdfs(out_dir: Path, count: int) -> list[Path]:
    """Write ``doc-000.pdf`` … into ``out_dir`` (created); returns the paths in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = out_dir / f"doc-{index:03d}.pdf"
        path.write_bytes(pdf_bytes(expected_pages(index)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: make_pdfs.py OUT_DIR [COUNT]", file=sys.stderr)
        sys.exit(2)
    made = make_pdfs(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 6)
    print(f"wrote {len(made)} PDFs to {sys.argv[1]}")
