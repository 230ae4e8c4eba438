"""audiod benchmark: latency, accuracy, CPU, memory and capture cost, side by side with offline Whisper.

Run with ``make bench`` (or ``.venv/bin/python -m bench``); see ``bench/README.md``. Not part of the test
suite: it takes minutes and its figures depend on the machine.
"""
