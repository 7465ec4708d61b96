"""Reading, checking and tokenizing training data.

Start at ``tuning.data.tasks``: ``load_task_data`` (trainer), ``summarize``
(web side), ``collate_for_task``. Per task: ``readers`` + ``sft`` (chat and
instruction data, label masking), ``pretrain`` (plain text into blocks),
``classify`` (text + label). Shared: ``records`` (file reading and
checks), ``splits`` (validation split). Nothing here imports torch or
transformers at import time: the web process uses the readers.
"""
