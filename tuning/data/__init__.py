"""Reading, checking and tokenizing training data.

Start at ``tuning.data.tasks``: ``load_task_data`` (trainer), ``summarize``
(web side), ``collate_for_task``. Per task: ``readers`` + ``sft`` (chat and
instruction data, label masking), ``pretrain`` (plain text into blocks),
``classify`` (text + label), ``preference``. Nothing here imports torch or
transformers at import time: the web process uses the readers.

Imports point one way, from files up to tasks:

    sources  (bytes, encodings, lines)
    <- parsers  (records per file format: JSONL, JSON, CSV/TSV, Parquet)
    <- formats  (FILE_FORMATS, the table of file formats; zip; describe)
    <- records  (a dataset's rows, column helpers, summaries)
    <- schemas/  (one file per family of row schemas: fields, tasks, parsers)
    <- schema  (SCHEMAS, the table of row schemas; the one detector; task_rows)
    <- readers, pretrain, classify, preference  <- tasks

A new file format is a parser and one ``FileFormat`` row in
``formats.FILE_FORMATS``; a new row schema is one file in ``schemas/`` and
one line in ``schema.SCHEMAS`` (tests/core/fake_format.py does both).
"""
