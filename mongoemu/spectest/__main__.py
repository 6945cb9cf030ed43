"""Command line: ``python -m mongoemu.spectest DIR [DIR...] [--uri URI] [--sharded-uri URI] ...``.

Exit status is 0 unless ``--fail-under PCT`` is given and the pass rate of non-skipped cases is
below it (a run where nothing ran counts as below).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mongoemu.spectest.runner import run_suites


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mongoemu.spectest",
                                     description="Run unified-format spec tests against the emulator.")
    parser.add_argument("dirs", nargs="+", type=Path, help="directories of unified-format *.json spec files")
    parser.add_argument("--uri", help="replica-set URI to test; without it the runner starts emulators itself")
    parser.add_argument("--sharded-uri", help="mongos URI for tests that need a sharded cluster")
    parser.add_argument("--auth-uri", help="replica-set URI with credentials, for tests that need "
                                           "authentication")
    parser.add_argument("--cluster", type=int, metavar="SHARDS",
                        help="run every case through the router of an emulated cluster of SHARDS "
                             "shards (python -m mongoemu cluster); cases that need a replica set "
                             "are skipped")
    parser.add_argument("--server-version", default="7.0",
                        help="version for started emulators, and for runOnRequirements if the server "
                             "does not report one (default: %(default)s)")
    parser.add_argument("-k", dest="pattern", help="only cases whose 'suite/file :: description' matches "
                                                   "this regular expression (case-insensitive)")
    parser.add_argument("--verbose", action="store_true", help="print every case as it finishes")
    parser.add_argument("--fail-under", type=float, metavar="PCT",
                        help="exit 1 when the pass rate of non-skipped cases is below PCT")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")
    report = run_suites(args.dirs, args.uri, args.sharded_uri, server_version=args.server_version,
                        pattern=args.pattern, verbose=args.verbose, auth_uri=args.auth_uri,
                        cluster_shards=args.cluster)
    print(report.format(verbose=args.verbose))
    if args.fail_under is not None:
        rate = report.pass_rate
        if rate is None or rate < args.fail_under:
            print(f"pass rate {rate if rate is None else round(rate, 1)} is below --fail-under {args.fail_under}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
