"""Minimal reproductions of the defects the campaign found, one script each, runnable on their
own: ``.venv/bin/python -m tests.campaign.repro.<name>``. Each prints what it sees and exits 1
while the defect is there, 0 once it is fixed. They are not collected by pytest."""
