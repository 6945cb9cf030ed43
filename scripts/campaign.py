"""The randomized differential campaign's long mode: run seeds until a time budget ends.

    .venv/bin/python -m scripts.campaign --seconds 600              # seeds 1, 2, 3, ...
    .venv/bin/python -m scripts.campaign --seconds 3600 --start-seed 1000 --jobs 2
    .venv/bin/python -m scripts.campaign --seed 42                  # one seed (a reproduction)
    .venv/bin/python -m scripts.campaign --seconds 1800 --big       # documents near 16 MiB too

Each seed starts two emulated clusters, loads its initial data, runs the real mongosync
process while the seed's timeline writes to the source (DDL, transactions, kill -9 and restarts,
injected faults), commits, and compares both clusters byte for byte. One line per seed; at the
end the totals, and for each failure the command that reproduces it. Exit status 1 when any
seed failed. ``--long`` (implied by ``--big``) uses more data and longer timelines than the
test suite's seeds; the seeds of ``tests/campaign/test_campaign.py`` run without it.

Stopping it (Ctrl-C, ``kill``, even ``kill -9``) stops the seeds in flight with their clusters
and mongosync processes: SIGTERM is an interrupt here, and each worker process of ``--jobs``
gets SIGTERM from the kernel when the campaign's process dies (Linux), so nothing is left
running behind it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mongoemu.cluster.launcher import die_with_parent
from tests.campaign.runner import (Outcome, load_plan, minimize, run_plan,
                                   run_seed)

# In a ``--jobs`` worker: the campaign's process, its parent (None in the campaign's own).
_campaign_pid: int | None = None


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the seed in flight leaves through its ``with`` blocks, which stop its
    emulators and its mongosync process. Only the first signal counts: a second one (Ctrl-C
    reaches the workers, then the campaign terminates them) would cut that clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _worker_started(campaign_pid: int) -> None:
    """A ``--jobs`` worker's set-up: interrupted by SIGTERM, and sent SIGTERM by the kernel when
    the campaign's process dies, however it dies (a SIGKILL runs none of its own code)."""
    global _campaign_pid
    _campaign_pid = campaign_pid
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    die_with_parent()
    if os.getppid() != campaign_pid:  # it died before prctl: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def _run(seed: int, big: bool, long: bool, keep_logs: bool) -> Outcome:
    try:
        return run_seed(seed, big=big, long=long, keep_logs=keep_logs)
    except KeyboardInterrupt:
        if _campaign_pid is not None and os.getppid() != _campaign_pid:
            # Orphaned, its seed's processes stopped: nobody reads a result or sends more work,
            # and the pool's queues could hold this process forever.
            os._exit(130)
        raise


def _replay_or_minimize(replay: str | None, minimize_path: str | None) -> int:
    if replay:
        outcome = run_plan(load_plan(replay))
        print(outcome.line())
        print(load_plan(replay).summary())
        return 0 if outcome.passed else 1
    assert minimize_path is not None
    plan = load_plan(minimize_path)
    first = run_plan(plan)
    print(f"original: {first.line()}", flush=True)
    if first.passed:
        print("the plan passes: nothing to minimize")
        return 0
    def kind(reason: str) -> str:
        """A failure's kind: its reason without numbers or what follows a colon. A fatal error
        is one kind whether the campaign saw the process exit on it or read it first."""
        if reason.startswith(("mongosync exited (status 1)", "mongosync reported a fatal")):
            return "fatal error"
        return "".join(c for c in reason.split(":")[0] if not c.isdigit()).strip()

    wanted = kind(first.reason)

    def same(outcome: Outcome) -> bool:
        return kind(outcome.reason) == wanted

    smallest = minimize(plan, same, out=lambda line: print(line, flush=True))
    final = run_plan(smallest, keep_logs=True)
    print("\n".join(smallest.lines()))
    print(final.line())
    print(f"smallest plan saved in {final.log_dir}/plan.pickle; replay with: "
          f".venv/bin/python -m scripts.campaign --replay {final.log_dir}/plan.pickle")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.campaign",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget: start seeds until it ends (default: one seed)")
    parser.add_argument("--start-seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="run this one seed only")
    parser.add_argument("--count", type=int, default=None, help="stop after this many seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1)")
    parser.add_argument("--big", action="store_true", help="documents near 16 MiB (slow)")
    parser.add_argument("--long", action="store_true",
                        help="more data and longer timelines than the test suite's seeds")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep every seed's logs, not only those of failed seeds")
    parser.add_argument("--replay", metavar="PLAN_PICKLE",
                        help="run the plan a failed run saved (its log directory's plan.pickle)")
    parser.add_argument("--minimize", metavar="PLAN_PICKLE",
                        help="cut a failing plan down to the steps its failure needs; prints "
                             "the smallest plan and saves it")
    args = parser.parse_args(argv)
    if args.replay or args.minimize:
        return _replay_or_minimize(args.replay, args.minimize)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.seed is not None:
        seeds_wanted: int | None = 1
        first = args.seed
    else:
        seeds_wanted = args.count
        first = args.start_seed
        if args.seconds is None and args.count is None:
            seeds_wanted = 1
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    started = time.monotonic()
    outcomes: list[Outcome] = []
    next_seed = first

    def may_start() -> bool:
        if seeds_wanted is not None and next_seed - first >= seeds_wanted:
            return False
        return deadline is None or time.monotonic() < deadline

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        print(outcome.line(), flush=True)

    interrupted = False
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.jobs == 1:
        try:
            while may_start():
                seed, next_seed = next_seed, next_seed + 1
                report(_run(seed, args.big, args.long, args.keep_logs))
        except KeyboardInterrupt:  # the seed in flight stopped its processes on the way out
            interrupted = True
            next_seed -= 1
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_worker_started,
                                 initargs=(os.getpid(),)) as pool:
            running: set[Future[Outcome]] = set()
            try:
                while True:
                    while len(running) < args.jobs and may_start():
                        running.add(pool.submit(_run, next_seed, args.big, args.long,
                                                args.keep_logs))
                        next_seed += 1
                    if not running:
                        break
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        report(future.result())
            except KeyboardInterrupt:
                # Ctrl-C reached the workers too; a SIGTERM reached this process alone.
                interrupted = True
                next_seed -= len(running)
                for worker in multiprocessing.active_children():
                    worker.terminate()
                pool.shutdown(wait=True, cancel_futures=True)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    passed = len(outcomes) - len(failed)
    mode = " --big" if args.big else (" --long" if args.long else "")
    if interrupted:
        print("interrupted: the seeds in flight are not counted")
    print(f"campaign{mode}: {len(outcomes)} seeds run ({first}..{next_seed - 1}) in "
          f"{time.monotonic() - started:.0f}s: {passed} passed, {len(failed)} failed")
    for outcome in failed:
        print(f"  FAILED seed={outcome.seed}: {outcome.reason}; reproduce with: "
              f"{outcome.command}")
    return 1 if failed or not outcomes or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
