"""Radiologist reader study of the explanations (tracker issue 7).

* :mod:`.config`: ``study.yaml`` (validation and default arms and questions);
* :mod:`.builder`: ``reader-study build``, the study folder (layout documented there);
* :mod:`.deid`: de-identified, metadata-free PNG images; the burned-in annotation check;
* :mod:`.store`: :class:`ResponseStore`, the answers in ``DIR/responses.sqlite`` (SQLite, WAL);
* :mod:`.analysis` and :mod:`.report`: ``reader-study analyze``, statistics and the HTML report;
* :mod:`.cli`: the ``reader-study`` command line.

User guide: ``docs/reader_study.md``. Importing this package loads neither torch nor the web stack.
"""

from monai_exaggeration.reader_study.config import ReaderStudyError
from monai_exaggeration.reader_study.store import ResponseStore

__all__ = ["ReaderStudyError", "ResponseStore"]
