"""What the long-form probes share: their command line and their results file (one row per
model, replaced when the same model is probed again)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def probe_args(default_out: str, default_n: int = 100, cache: bool = False
               ) -> argparse.Namespace:
    """--model, --n, --threads, --out (and --cache for probes that decode); sets torch's
    threads."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--n", type=int, default=default_n)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(default_out))
    if cache:
        ap.add_argument("--cache", choices=["none", "prefix", "dual"], default="none")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def save_row(out: Path, row: dict) -> None:
    """Print the row and put it in `out`, replacing an earlier row of the same model."""
    print(json.dumps(row))
    results = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([r for r in results if r["model"] != row["model"]] + [row],
                              indent=2) + "\n")
