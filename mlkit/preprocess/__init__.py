"""Preprocessing that travels with the model, as data.

:meth:`Preprocessor.fit` learns, from the training rows of a canonical table (``float64``,
``string`` and ``timestamp[us]`` columns, nulls allowed), everything needed to turn rows into
float32 model inputs; :meth:`Preprocessor.transform` applies it to a table or to the records a
server receives, through one code path; :meth:`Preprocessor.to_dict` saves it as plain JSON
data (never pickle) so the registry can copy it beside the model.

Per input column:

- numeric: missing values take the train median, then ``(x - mean) / std`` with the train
  mean and std (std 0 counts as 1); a ``<col>__missing`` 0/1 column is added when the column
  had missing values in train. NaN and inf in a table count as missing.
- categorical (string columns, and numeric ones named in ``categorical``): one-hot over the
  ``max_categories`` most frequent train values (ties by value), one ``<other>`` slot for the
  rarer train values, and one ``<unknown>`` slot for missing values and values never seen in
  train; those unseen values are counted per column, never refused.
- dates: year, month, day, weekday (Monday 0) and, when a train value has a time of day, hour;
  each standardised; missing values take the train median date and add an indicator.
- id-like columns (all-unique strings, or all-unique integral numbers named like an id) are
  dropped with a :class:`PreprocessWarning`, unless named in ``features``, ``categorical``
  or ``sensitive``.

Records (``list[dict]``) are held to stricter rules than tables, because they come from
outside: see :meth:`Preprocessor.validate_records`.
"""

from mlkit.preprocess._columns import OTHER, UNKNOWN
from mlkit.preprocess._fit import PreprocessWarning
from mlkit.preprocess._preprocessor import (
    FORMAT_VERSION,
    Preprocessor,
    Transformed,
    infer_task,
)
from mlkit.preprocess._records import RecordError

__all__ = [
    "FORMAT_VERSION",
    "OTHER",
    "UNKNOWN",
    "PreprocessWarning",
    "Preprocessor",
    "RecordError",
    "Transformed",
    "infer_task",
]
