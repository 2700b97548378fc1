"""The Lambda image: its size, and the handler's init time (runtime start to its first request
for an event: what Lambda reports as Init Duration) run from the image in the local sandbox,
side by side with the same runtime run from this checkout's virtual environment.

    sudo .venv/bin/python benchmarks/bench_lambda_image.py [--runs 10]

Needs root, buildah and debootstrap (the image is built first unless its hash tag exists).
Writes benchmarks/results/lambda_image.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, write_results

ROOT = Path(__file__).resolve().parent.parent


def tree_bytes(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def init_times(runs: int, image: object | None) -> list[float]:
    from boxer.backends.emulators.lambda_local import invoke_local

    times = []
    for _ in range(runs):
        # {} is not a boxer event: the handler refuses it at once, after its init was measured.
        result = invoke_local({}, timeout=30, image=image)  # type: ignore[arg-type]
        assert result.status == "error" and result.init_duration is not None, result
        times.append(result.init_duration)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lambda_image.json"))
    args = parser.parse_args()
    from boxer.backends.emulators.image import close_image, open_image

    built = subprocess.run([sys.executable, str(ROOT / "lambda_image" / "build.py"), "--example", "redis"],
                           capture_output=True, text=True, check=True).stdout.split()
    base, redis = built
    sizes = {}
    for image in (base, redis):
        opened = open_image(image, "bench-image-size")
        sizes[image] = {"bytes": tree_bytes(opened.rootfs),
                        "boxer_venv_bytes": tree_bytes(f"{opened.rootfs}/opt/boxer")}
        close_image(opened)
    root = open_image(base, "bench-image")
    try:
        rows = {"image (sandbox)": init_times(args.runs, root), "venv (no sandbox)": init_times(args.runs, None)}
    finally:
        close_image(root)
    results: dict = {"images": sizes, "init_seconds": {}}
    print(f"{'image':44} {'root MB':>8} {'/opt/boxer MB':>14}")
    for name, size in sizes.items():
        print(f"{name:44} {size['bytes'] / 1e6:8.0f} {size['boxer_venv_bytes'] / 1e6:14.0f}")
    print(f"\n{'handler init (runtime start to /next)':40} {'median':>8} {'p90':>8} {'runs':>5}")
    for name, samples in rows.items():
        results["init_seconds"][name] = {"median": statistics.median(samples), "p90": percentile(samples, 0.9),
                                         "samples": samples}
        print(f"{name:40} {statistics.median(samples):8.3f} {percentile(samples, 0.9):8.3f} {len(samples):5d}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
