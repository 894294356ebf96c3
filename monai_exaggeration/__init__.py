"""monai_exaggeration: explain chest X-ray classifiers by progressive exaggeration (MONAI plugin).

Importing the package changes nothing global: the bundle workflows install their one-line error
reporting themselves, first thing in their ``initialize`` list
(:func:`monai_exaggeration.bundle.check_overrides`), and the commands at their entry point.
"""

__version__ = "0.10.0"
