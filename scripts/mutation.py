"""Mutation testing of the safety-critical modules with mutmut 3, each against its own tests.

Each module runs in a copy of the tree under the work folder (never in the repository: mutmut
writes a `mutants/` folder next to pyproject.toml), with the [tool.mutmut] settings of
pyproject.toml plus the module to mutate and the test files that cover it. Prints, per
module, the mutants killed and surviving, the score and how long it took, and writes each
survivor's diff to <work>/<module>/survivors.txt. Run through `scripts/mutation`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What a module's copy of the tree needs: the package, the tests and what they read.
COPIED = ("bucketdav", "tests", "config", "pyproject.toml", "README.md")
# Smallest first: on a slow machine the first results come early. Test files are the ones
# that exercise the module in-process (mutmut maps tests to functions by running them;
# a live server in another process is not seen, and only costs time).
MODULES: dict[str, tuple[str, ...]] = {
    "bucketdav/uploads/naming.py": (
        "tests/test_naming.py",
        "tests/test_templates.py",
        "tests/test_properties.py",
        "tests/test_replicas.py",
        "tests/test_api.py",
    ),
    "bucketdav/uploads/templates.py": (
        "tests/test_templates.py",
        "tests/test_properties.py",
        "tests/test_replicas.py",
        "tests/test_replicas_api.py",
    ),
    "bucketdav/uploads/archives/members.py": (
        "tests/test_archive_members.py",
        "tests/test_archives.py",
        "tests/test_properties.py",
        "tests/test_archives_api.py",
    ),
    "bucketdav/uploads/receive.py": (
        "tests/test_receive.py",
        "tests/test_api.py",
        "tests/test_deploy.py",
        "tests/test_protocol.py",
        "tests/test_replicas_api.py",
    ),
    "bucketdav/uploads/archives/tree.py": (
        "tests/test_archive_tree.py",
        "tests/test_archives.py",
        "tests/test_archives_api.py",
        "tests/test_durability.py",
    ),
    "bucketdav/access/decide.py": (
        "tests/test_access_decide.py",
        "tests/test_access.py",
        "tests/test_access_api.py",
    ),
    "bucketdav/dav/lookup.py": (
        "tests/test_dav_lookup.py",
        "tests/test_dav.py",
        "tests/test_dav_confinement.py",
        "tests/test_dav_conditional.py",
        "tests/test_listing.py",
        "tests/test_properties.py",
    ),
    "bucketdav/store/blobs.py": (
        "tests/test_blobs.py",
        "tests/test_nodes.py",
        "tests/test_api.py",
        "tests/test_deploy.py",
        "tests/test_durability.py",
        "tests/test_replicas.py",
        "tests/test_archives_api.py",
    ),
    # test_collect_race.py is left out: under mutmut's tracing its collector, slowed down,
    # collects nothing in the time the race allows, and the clean run fails.
    "bucketdav/store/collect.py": (
        "tests/test_collect_mutants.py",
        "tests/test_collect_order.py",
        "tests/test_collect.py",
    ),
}
# Where only part of a module is safety-critical, or only part runs in-process, the
# functions to mutate (the rest of receive.py is Cheroot's chunked reader: live tests only).
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "bucketdav/uploads/receive.py": (
        "declared_length",
        "body_chunks",
        "read_multipart",
        "utf8_name",
        "chunk_size",
        "expected_checksums",
        "verify_checksums",
        "deploy_digest",
    ),
}
# mutmut's exit codes of a mutant's test run, as `mutmut results` names them.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}


@dataclass
class Result:
    """What one module's run gave."""

    module: str
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def score(self) -> float | None:
        """Killed (timeouts count: the mutant did not pass) over the mutants that were tested."""
        killed = self.counts.get("killed", 0) + self.counts.get("timeout", 0)
        tested = killed + self.counts.get("survived", 0) + self.counts.get("suspicious", 0)
        return 100.0 * killed / tested if tested else None


def main() -> int:
    """Run the chosen modules one after the other and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="parts of module paths (default: all)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per module")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants at once")
    default_work = Path(tempfile.gettempdir()) / "bucketdav-mutation"
    parser.add_argument("--work", type=Path, default=default_work, help="where the copies go")
    args = parser.parse_args()
    chosen = [m for m in MODULES if not args.modules or any(p in m for p in args.modules)]
    if not chosen:
        parser.error(f"no module matches {args.modules}; known: {', '.join(MODULES)}")
    started = time.monotonic()
    results = []
    for module in chosen:
        if not (REPO / module).is_file():
            results.append(Result(module, note="not in this tree yet"))
            print(f"{module}: not in this tree yet, skipped", flush=True)
            continue
        results.append(run_module(module, MODULES[module], args))
    print()
    columns = ("killed", "surv.", "t/out", "none", "left", "score")
    print(f"{'module':48} " + " ".join(f"{c:>6}" for c in columns) + f" {'time':>7}")
    for result in results:
        score = "-" if result.score is None else f"{result.score:.1f}%"
        c = result.counts
        counts = (c.get(k, 0) for k in ("killed", "survived", "timeout", "no tests", "not checked"))
        print(
            f"{result.module:48} " + " ".join(f"{n:6}" for n in counts) + f" {score:>6} "
            f"{result.seconds:6.0f}s {result.note}"
        )
    print(f"total time: {time.monotonic() - started:.0f} s")
    return 0


def run_module(module: str, tests: tuple[str, ...], args: argparse.Namespace) -> Result:
    """Mutate `module` in a fresh copy of the tree and run mutmut there, bounded in time."""
    dotted = module.removesuffix(".py").replace("/", ".")
    work = args.work / dotted
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, work / name)
    configure(work / "pyproject.toml", module, tests)
    print(f"{module}: mutating in {work}, against {' '.join(tests)}", flush=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    chosen = [f"{dotted}.x_{name}__mutmut_*" for name in FUNCTIONS.get(module, ())]
    command = [str(mutmut), "run", "--max-children", str(args.jobs), *chosen]
    started = time.monotonic()
    note = ""
    with open(work / "mutmut.log", "wb") as log:
        # Its own process group, so a run past the bound stops with every worker it forked.
        process = subprocess.Popen(
            command, cwd=work, stdout=log, stderr=log, start_new_session=True
        )
        try:
            code = process.wait(timeout=args.timeout)
            if code != 0:
                note = f"mutmut exited {code}, see {work / 'mutmut.log'}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            note = f"stopped after {args.timeout:.0f} s: partial"
    result = Result(module, seconds=time.monotonic() - started, note=note)
    meta = work / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    for name, code in codes.items():
        if chosen and not any(fnmatch.fnmatchcase(name, pattern) for pattern in chosen):
            continue
        status = STATUS.get(code, "suspicious") if code is not None else "not checked"
        result.counts[status] = result.counts.get(status, 0) + 1
        if status in ("survived", "suspicious"):
            result.survivors.append(name)
    write_survivors(work, mutmut, result)
    score = "-" if result.score is None else f"{result.score:.1f}%"
    print(
        f"{module}: {result.counts} score {score} in {result.seconds:.0f} s {note}".rstrip(),
        flush=True,
    )
    return result


def configure(pyproject: Path, module: str, tests: tuple[str, ...]) -> None:
    """Add the module to mutate and its tests to the copy's [tool.mutmut] table."""
    lines = pyproject.read_text().splitlines()
    header = lines.index("[tool.mutmut]")
    lines[header + 1 : header + 1] = [
        f"only_mutate = {json.dumps([module])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}",
    ]
    pyproject.write_text("\n".join(lines) + "\n")


def write_survivors(work: Path, mutmut: Path, result: Result) -> None:
    """Each surviving mutant's diff, one after the other, in survivors.txt."""
    with open(work / "survivors.txt", "w") as out:
        for name in result.survivors:
            shown = subprocess.run(
                [str(mutmut), "show", name], cwd=work, capture_output=True, text=True, check=False
            )
            out.write(shown.stdout + "\n")


if __name__ == "__main__":
    sys.exit(main())
