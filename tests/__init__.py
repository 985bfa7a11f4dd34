"""The suite beyond the lesson's smoke test (test_scripts.py): one module per concern, the shared
helpers in tiny.py. `python -m unittest` from the repository's root runs them all."""
