"""Example jobs shipped with gpubot (they run on the instance, not in the bot).

Each job lives in its own folder, which is what gets packed and deployed as the workspace:
``train/train.py`` (numpy MLP; checkpoints, resume, Trainer-style log lines) and
``ocr/ocr.py`` (+ ``ocr/make_pdfs.py``; PDF text extraction with a manifest). The scripts are
standalone (python3 + numpy/pypdf) and never import gpubot. README.md in this folder documents
the job contract for users.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["JOBS_DIR", "job_dir", "job_names"]

JOBS_DIR = Path(__file__).resolve().parent


def job_names() -> list[str]:
    """Names of the bundled example jobs (folders with a ``<name>.py`` entry point)."""
    return sorted(
        d.name for d in JOBS_DIR.iterdir() if d.is_dir() and (d / f"{d.name}.py").is_file()
    )


def job_dir(name: str) -> Path:
    """The folder of example job ``name`` (deploy it as the workspace).

    Raises:
        KeyError: no such bundled job.
    """
    if name not in job_names():
        raise KeyError(f"no bundled job named {name!r}; have {', '.join(job_names())}")
    return JOBS_DIR / name
