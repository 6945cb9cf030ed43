"""The randomized differential campaign: seeded source workloads, kills and faults around a real
``mongosync`` process, ending with a byte-for-byte comparison of both clusters.

- ``generator.py``: from a seed, a plan (initial data, a timeline for the copy and one for change
  application: CRUD over every BSON type, DDL, transactions, kill -9s, pauses, resets, injected
  faults; the /start body: filters, pre-existing destination data, buildIndexes, verifier).
  ``AVOIDED`` lists the triggers of open defects kept out of the plans until they are fixed.
- ``runner.py``: runs a plan end to end (two fresh authenticated emulators, the ``mongosync``
  console script over HTTP, commit) and checks documents, indexes, options and write blocking
  with pymongosync's verifier and with ``check.py``, an independent comparison.
- ``test_campaign.py``: the fixed seeds of the test suite (``-m "not campaign"`` deselects them).
- ``repro/``: a minimal script per defect found, ``.venv/bin/python -m tests.campaign.repro.<name>``.

The long mode is ``scripts/campaign.py``: ``.venv/bin/python -m scripts.campaign --seconds 600``;
``--seed N`` reruns one seed, ``--replay DIR/plan.pickle`` reruns the exact plan a failed run
saved (its logs, ``plan.txt`` and ``timeline.txt`` are in ``DIR``), ``--minimize`` cuts such a
plan down to the steps its failure needs.
"""
