"""Change application's per-event work, counted in instructions: steady where CPU time is not.

Run: ``.venv/bin/python -m bench.apply_instructions [--documents 1000] [--rounds 3]
[--code <checkout>]`` (needs ``valgrind``; about a minute).

CPU time per event on a shared 2-core machine varies by a third from run to run
(``bench.apply_scaling``), more than most changes to the per-event code are worth. This counts
the instructions instead, with ``valgrind --tool=callgrind``, of the engine's own per-event
work on a captured backlog (N inserts, then one ``update_many`` touching them all: the backlog
of ``bench.apply_scaling``), read from an emulator once and replayed in-process:

- *reader*: the change-stream reader's loop over a getMore's events (``RawChangeStream``
  handing them out, the reader gathering a batch), the reply's decoding included;
- *translate + encode*: decoding the reply, translating its events into writes
  (``Translator``), and encoding the write commands the applier sends.

Network and the servers are left out: they are the same for any version of this code. Each
part runs once and then ``--rounds`` more times under callgrind; the difference divided by the
extra events is the figure, so start-up and imports cancel out. ``--code`` measures the
``pymongosync`` of another checkout (an older one, say) on the same backlog, to compare them.
"""

from __future__ import annotations

import argparse
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_emulator


def capture(documents: int, path: Path) -> int:
    """The raw getMore replies of the backlog's change stream, saved; the number of events."""
    with start_emulator(extra_args=["--oplog-size-mb", "512"]) as source, \
            pymongo.MongoClient(source.uri) as client:
        client.bench.command("create", "backlog")
        start = client.admin.command("ping")["operationTime"]
        collection = client.bench.backlog
        for first in range(0, documents, 1000):
            collection.insert_many([{"k": first + i, "v": "b" * 100}
                                    for i in range(min(1000, documents - first))])
        collection.update_many({}, {"$set": {"touched": True}})
        raw: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
        spec = {"allChangesForCluster": True, "showExpandedEvents": True,
                "showRawUpdateDescription": True, "startAtOperationTime": start}
        reply = client.admin.command({"aggregate": 1, "pipeline": [{"$changeStream": spec}],
                                      "cursor": {"batchSize": 0}}, codec_options=raw)
        cursor_id = reply["cursor"]["id"]
        replies: list[bytes] = []
        events = 0
        while events < 2 * documents:
            reply = client.admin.command({"getMore": cursor_id, "collection": "$cmd.aggregate",
                                          "batchSize": 1000, "maxTimeMS": 500},
                                         codec_options=raw)
            count = len(reply["cursor"]["nextBatch"])
            if count == 0:
                break
            events += count
            replies.append(bytes(reply.raw))
    path.write_bytes(pickle.dumps(replies))
    return events


# -- what runs under callgrind -------------------------------------------------------------------


def run_part(part: str, replies_path: str, rounds: int, code: str) -> None:
    import gc

    sys.path.insert(0, code)  # before anything imports pymongosync

    from pymongosync import clusters
    from pymongosync.changes.translate import CrudStep, Translator
    from pymongosync.namespaces import NamespaceFilter
    from pymongosync.phases import apply

    if not Path(clusters.__file__).resolve().is_relative_to(Path(code).resolve()):
        raise RuntimeError(f"pymongosync was imported from {clusters.__file__}, not {code}")

    # As while the engine applies changes: its cyclic collector runs that much less often.
    threshold = getattr(apply, "GC_THRESHOLD_WHILE_APPLYING", None)
    if threshold is not None:  # (absent from a checkout older than it)
        gc.set_threshold(threshold, *gc.get_threshold()[1:])

    replies: list[bytes] = pickle.loads(Path(replies_path).read_bytes())
    codec = clusters.RAW

    def reader() -> None:
        for data in replies:
            stream = clusters.RawChangeStream.__new__(clusters.RawChangeStream)
            stream._token, stream._token_of = None, None
            stream._absorb(codec.document_class(data, codec)["cursor"], "nextBatch")
            stream._cursor_id = 0  # the batch alone: no getMore
            batch: list[Any] = []
            oldest = 0.0
            take = getattr(stream, "next_events", None)
            while True:  # as the reader thread gathers a batch (per event before next_events)
                if take is not None:
                    events = take(1000 - len(batch))
                else:
                    event = stream.try_next()
                    events = [] if event is None else [event]
                if not events:
                    break
                if not batch:
                    oldest = time.monotonic()
                batch.extend(events)
                _ = time.monotonic() - oldest
            _ = stream.resume_token

    def translate_and_encode() -> None:
        translator = Translator(NamespaceFilter())
        for data in replies:
            batch = list(codec.document_class(data, codec)["cursor"]["nextBatch"])
            for step in translator.translate(batch).steps:
                if not isinstance(step, CrudStep):
                    continue
                for namespace, operations in step.writes.items():
                    for command, field, statements in clusters._runs(operations):
                        for chunk in clusters._batches(statements, 16 * 1024 * 1024, 100_000):
                            bson.encode({command: namespace[1], field: chunk, "ordered": True})

    work = reader if part == "reader" else translate_and_encode
    for _ in range(rounds):
        work()


def instructions(part: str, replies_path: str, rounds: int, code: str) -> int:
    with tempfile.TemporaryDirectory() as directory:
        completed = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/out",
             sys.executable, "-m", "bench.apply_instructions", "--run-part", part,
             replies_path, str(rounds), code], capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{completed.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose pymongosync is measured (default: this one)")
    parser.add_argument("--run-part", nargs=4, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.run_part:
        part, path, rounds, code = arguments.run_part
        run_part(part, path, int(rounds), code)
        return
    code = arguments.code.resolve()
    if not (code / "pymongosync" / "__init__.py").is_file():
        sys.exit(f"--code {arguments.code}: no pymongosync package there; give the root of a "
                 "pymongosync checkout")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind): it counts the "
                 "instructions this benchmark reports")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "replies.pickle"
        events = capture(arguments.documents, path)
        print(f"backlog: {arguments.documents:,} inserts + one update_many = {events:,} events, "
              f"replayed {arguments.rounds} more times than once")
        print(f"code measured: {code}")
        for part, label in (("reader", "reader (the stream's loop)"),
                            ("translate", "translate + encode")):
            once = instructions(part, str(path), 1, str(code))
            more = instructions(part, str(path), 1 + arguments.rounds, str(code))
            per_event = (more - once) / (arguments.rounds * events)
            print(f"{label:<28} {per_event:>10,.0f} instructions per event")


if __name__ == "__main__":
    main()
