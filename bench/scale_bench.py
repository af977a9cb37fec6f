"""What the run's bookkeeping costs as collections grow: plan, resume, status, merge, verify, export.

For each ``--images`` N, a committed run of N images is synthesized
(:func:`labeler.testing.committed_runs.commit_synthetic_shard`: real planner, real commit, real
RLE masks, 20-30 distinct masks per image) in a temporary folder, then each step runs in a fresh
child process, so its time and peak RSS are its own:

* ``plan``: plan N URIs (listing, sharding, manifests, ``run/plan.json``);
* ``resume``: the resume's listing diff (:func:`labeler.runtime.plan.extend_plan`: the same N
  URIs listed again against the plan);
* ``merge``: ``merge_outputs`` (images.parquet, annotations/ copies, the COCO files from the
  committed fragments), default ``coco_max_annotations``;
* ``status``: ``labeler status`` (sizes and stamps, no hashing; the stats from the roll-ups the
  driver writes, :mod:`labeler.runtime.rollup`);
* ``verify``: ``labeler verify`` with ``--processes`` processes; RSS is the driver's, and
  ``children_peak_rss_mb`` the largest verifying process;
* ``export``: ``labeler export --format coco-rle``;
* ``load``: a consumer: ``pycocotools.coco.COCO`` on the run's first COCO file.

``--plan-only`` sizes get the plan and resume steps only (no parts: disk stays small).
Steps that read the merged outputs merge first, unmeasured, when ``merge`` is not among the
``--steps``. ``--work DIR --keep`` keeps each committed run under ``DIR/run-N``; a later call
with the same ``--work`` reuses it (no plan, no resume, no synthesis). The verify of a
1M-annotation run alone (40,000 images, ~25 annotations each; the synthesis and the unmeasured
merge take minutes, ~2.5 GB of disk)::

    python bench/scale_bench.py --images 40000 --steps verify --processes 2

    python bench/scale_bench.py --images 10000,100000 --plan-only 1000000

Prints one JSON line: ``{"steps": {N: {step: {"seconds", "cpu_seconds", "peak_rss_mb",
"load_average" (1-minute, when the step ended), ...}}}, "annotations": {N: count}, "load_average": [...], "cpus": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("plan", "resume", "merge", "status", "verify", "export", "load")
#: Steps that need every shard committed (merge also before status, verify, export, load).
NEEDS_PARTS = {"merge", "status", "verify", "export", "load"}
#: Steps that read the merged outputs (merged first, unmeasured, when ``merge`` is not asked).
NEEDS_MERGED = {"status", "verify", "export", "load"}


def _step(step: str, out: str, n_images: int, shard_size: int, processes: int) -> dict:
    """Run one step here (in the child); returns what it measured beside time and RSS."""
    from labeler.io.folders import Folder
    from labeler.output.merge import merge_outputs
    from labeler.runtime.plan import extend_plan, plan_run
    from labeler.runtime.run_folder import RunFolder
    from labeler.testing.committed_runs import CATEGORIES, config_for, uris

    run = RunFolder(Folder(out))
    if step == "plan":
        run.claim(config_for(out, shard_size))
        return {"shards": len(plan_run(run, uris(n_images), shard_size)["shards"])}
    if step == "resume":
        _, changes = extend_plan(run, uris(n_images), shard_size)
        return {"new_images": changes.new_images, "removed_images": changes.removed_images}
    if step == "status":
        from labeler.runtime.status import run_progress
        progress = run_progress(out)
        return {"state": progress["state"], "shards": progress["shards_total"]}
    if step == "merge":
        shard_ids = [shard["shard_id"] for shard in run.read_plan()["shards"]]
        counts = merge_outputs(run.output, shard_ids, CATEGORIES, {"run_id": "bench"})
        files = sorted(p for p in Path(out).glob("coco*") if p.name != "coco")
        files += sorted(Path(out, "coco").glob("*.json")) if Path(out, "coco").exists() else []
        return {"annotations": counts["annotations"],
                "coco_files": len(files), "coco_mb": sum(p.stat().st_size for p in files) / 1e6}
    if step == "verify":
        from labeler.runtime.verify import verify_output
        problems = verify_output(out, processes=processes)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"problems": len(problems),
                "children_cpu_seconds": round(children.ru_utime + children.ru_stime, 3),
                # an upper bound: a spawned process's ru_maxrss starts at its parent's RSS
                "children_peak_rss_mb": round(children.ru_maxrss / 1024, 1)}
    if step == "export":
        from labeler.output.exporters.export import export
        summary = export(out, "coco-rle", out + ".export")
        return {"annotations": summary.annotations, "files": summary.files}
    if step == "load":
        from pycocotools.coco import COCO

        from labeler.output.coco_files import coco_files
        first = coco_files(run.output, "coco.json")[0]
        coco = COCO(str(Path(out, first)))
        return {"file": first, "file_mb": round(Path(out, first).stat().st_size / 1e6, 1),
                "annotations": len(coco.anns)}
    raise ValueError(step)


def _measure(step: str, out: str, n_images: int, shard_size: int, processes: int) -> dict:
    """Run one step in a fresh child process and read back its measurements."""
    command = [sys.executable, __file__, "--child", step, "--out", out,
               "--images", str(n_images), "--shard-size", str(shard_size),
               "--processes", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``: ``ru_maxrss`` would count the RSS of the
    process it was forked from)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(args: argparse.Namespace) -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    found = _step(args.child, args.out, args.images_one, args.shard_size, args.processes)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 3),
                      "cpu_seconds": round(time.process_time() - cpu_started, 3),
                      "peak_rss_mb": _peak_rss_mb(),
                      "load_average": round(os.getloadavg()[0], 1), **found}))


#: Written beside a run whose every shard is committed (``--keep``: the run is reused).
COMMITTED = "bench-committed.json"


def _commit_all(out: str) -> int:
    """Commit every planned shard with synthetic labels; returns the annotations."""
    from labeler.io.folders import Folder
    from labeler.runtime.run_folder import RunFolder
    from labeler.testing.committed_runs import commit_synthetic_shard, mask_pool

    run = RunFolder(Folder(out))
    pool = mask_pool()
    for shard in run.read_plan()["shards"]:
        commit_synthetic_shard(run, shard["shard_id"], pool)
    annotations = sum(run.read_stats(s["shard_id"])["annotations"]
                      for s in run.read_plan()["shards"])
    _roll_up(out)
    Path(out, COMMITTED).write_text(json.dumps({"annotations": annotations}))
    return annotations


def _roll_up(out: str) -> None:
    """Write the stats roll-ups the driver writes as shards are done (those missing)."""
    from labeler.io.folders import Folder
    from labeler.runtime.rollup import RollUpWriter
    from labeler.runtime.run_folder import RunFolder

    run = RunFolder(Folder(out))
    RollUpWriter(run, run.read_plan()["shards"], run.done_shards()).fill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="10000,100000", help="comma-separated sizes")
    parser.add_argument("--plan-only", default="", help="sizes for plan and resume only")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2, help="verify's processes")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="the steps for --images sizes (plan always runs)")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the runs under --work (and reuse those already there)")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.images_one = int(args.images)
        _child(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="scale-bench-"))
    steps: dict[str, dict] = {}
    annotations: dict[str, int] = {}
    chosen = tuple(step for step in STEPS if step == "plan" or step in args.steps.split(","))
    sizes = [(int(n), chosen) for n in args.images.split(",") if n]
    sizes += [(int(n), ("plan", "resume")) for n in args.plan_only.split(",") if n]
    for n_images, wanted in sizes:
        out = str(work / f"run-{n_images}")
        steps[str(n_images)] = {}
        if args.keep and Path(out, COMMITTED).exists():
            annotations[str(n_images)] = json.loads(Path(out, COMMITTED).read_text())["annotations"]
            _roll_up(out)  # a run kept by an older bench
            wanted = tuple(step for step in wanted if step in NEEDS_PARTS)
        for step in wanted:
            if step in NEEDS_PARTS and str(n_images) not in annotations:
                annotations[str(n_images)] = _commit_all(out)  # after plan and resume
            if step in NEEDS_MERGED and not Path(out, "images.parquet").exists():
                _step("merge", out, n_images, args.shard_size, args.processes)  # not measured
            steps[str(n_images)][step] = _measure(step, out, n_images, args.shard_size,
                                                  args.processes)
            print(n_images, step, json.dumps(steps[str(n_images)][step]), file=sys.stderr,
                  flush=True)
        shutil.rmtree(out + ".export", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"steps": steps, "annotations": annotations, "shard_size": args.shard_size,
                      "load_average": [round(x, 1) for x in os.getloadavg()],
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
