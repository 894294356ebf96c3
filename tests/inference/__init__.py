"""Tests of the inference (``monai_exaggeration.inference``), one file per unit.

A package, so that its modules (``inference.test_bundle_run``, ...) never clash with the
same-named modules in ``tests/``, and so that other tests import the shared helpers as
``from inference.helpers import ...`` (``tests/`` is on ``sys.path`` through ``tests/conftest.py``).
"""
