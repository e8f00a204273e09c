"""The closing table of `benchmarks/gpu_check.sh`, read from the files it wrote.

    python -m benchmarks.gpu_check_summary OUT_DIR

reads `OUT_DIR/steps.tsv` (one line per step: name, exit status, seconds),
`env.txt`, `pytest.log`, `kernels.csv` and `trials.csv`, prints one short
Markdown table (step, status, seconds, what it found) and writes it to
`OUT_DIR/summary.md`, followed by `env.txt`.
Every figure is read back from a file the step wrote, never from memory, so the
table says what a reader of the folder will find.
"""

from __future__ import annotations

import csv
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

# Exit statuses of `timeout`: the step ran out of its time.
TIMED_OUT = {124, 137}
# Which provider each kernel row is compared with (benchmarks/kernels.py BASELINE), and the
# ratios the table reports: (kernel prefix, provider, metric) -> label.
RATIOS = {
    ("shift", "triton", "fwd"): "shift/clone",
    ("shift_conv1x1", "triton_fused", "fwd"): "fused fwd/1x1",
    ("shift_conv1x1", "triton_fused", "fwd+bwd"): "fused fwd+bwd/1x1",
    ("shift_conv1x1", "dw3x3+conv1x1", "fwd"): "dw3x3+1x1 fwd/1x1",
}
BASELINE = {"shift": "clone", "shift_conv1x1": "conv1x1", "active_shift": "reference",
            "csc_block": "dw3x3"}


def pytest_counts(log: Path) -> str:
    """'700 passed, 3 failed, 8 skipped in 190s' from pytest's last summary line."""
    if not log.is_file():
        return "no log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if re.search(r"\b(passed|failed|error|errors|no tests ran)\b", ln) and " in " in ln]
    if not lines:
        failed = sum(1 for ln in log.read_text(errors="replace").splitlines()
                     if ln.startswith(("FAILED ", "ERROR ")))
        return f"cut short, {failed} failed before the cut" if failed else "cut short"
    return lines[-1].strip(" =")


def kernel_ratios(path: Path) -> str:
    """The median over shapes of the headline ratios, e.g. 'shift/clone 1.08 (1.02-1.12)'."""
    if not path.is_file():
        return "no rows"
    rows = list(csv.DictReader(path.open()))
    base: dict[tuple, float] = {}
    for r in rows:
        family = max((k for k in BASELINE if r["kernel"].startswith(k)), key=len, default=None)
        if family and r["provider"] == BASELINE[family]:
            base[(r["kernel"], r["shape"], r["layout"], r["metric"])] = float(r["median"])
    found: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for (kernel, provider, metric), label in RATIOS.items():
            if r["kernel"] == kernel and r["provider"] == provider and r["metric"] == metric:
                b = base.get((r["kernel"], r["shape"], r["layout"], r["metric"]))
                if b:
                    found[label].append(float(r["median"]) / b)
    parts = [f"{label} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
             for label, v in found.items()]
    return "; ".join(parts) or f"{len(rows)} rows, no headline ratio"


def search_outcome(path: Path) -> str:
    """'23 trials: 20 complete, 2 pruned, 1 failed' from the run's trials.csv."""
    if not path.is_file():
        return "no trials.csv"
    states = Counter(r["state"] for r in csv.DictReader(path.open()))
    total = sum(states.values())
    return f"{total} trials: " + ", ".join(f"{n} {s}" for s, n in states.most_common())


def environment(path: Path) -> str:
    """'NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0' from env.txt."""
    if not path.is_file():
        return "no env.txt"
    lines = path.read_text(errors="replace").splitlines()
    device = next((ln.split(",")[0].removeprefix("GPU ") for ln in lines
                   if ln.startswith(("GPU ", "CPU "))), "no device line")
    torch_v = next((ln.split(";")[1].strip() for ln in lines if ln.startswith("python ")), "")
    triton_v = next((ln for ln in lines if ln.startswith("triton ")), "")
    return ", ".join(p for p in (device, torch_v, triton_v) if p)


def summarise(out: Path) -> str:
    found = {"versions": lambda: environment(out / "env.txt"),
             "tests": lambda: pytest_counts(out / "pytest.log"),
             "kernels": lambda: kernel_ratios(out / "kernels.csv"),
             "search": lambda: search_outcome(out / "trials.csv")}
    lines = ["| step | status | s | found |", "|---|---|---:|---|"]
    steps = out / "steps.tsv"
    for line in steps.read_text().splitlines() if steps.is_file() else []:
        name, rc, seconds, *note = line.split("\t")
        status = "ok" if rc == "0" else ("timed out" if int(rc) in TIMED_OUT else f"exit {rc}")
        what = found[name]() if name in found else (note[0] if note else "")
        lines.append(f"| {name} | {status} | {seconds} | {what} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m benchmarks.gpu_check_summary OUT_DIR (the folder "
              "benchmarks/gpu_check.sh wrote)", file=sys.stderr)
        return 2
    out = Path(args[0])
    table = summarise(out)
    env = out / "env.txt"
    versions = env.read_text(errors="replace") if env.is_file() else "(no env.txt)\n"
    (out / "summary.md").write_text(f"{table}\n## Versions and device\n\n```\n{versions}```\n")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
