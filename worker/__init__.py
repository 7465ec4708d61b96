"""The worker side: Celery tasks, the runner that claims and runs every kind
of job, and the sink that records and publishes its events.

Import rule (checked by the import contracts in ``.importlinter``): ``worker``
may import ``studio`` and ``tuning``; ``studio`` never imports ``worker``
(the web side enqueues by task name and names kind runners by dotted path);
``tuning`` imports neither. Heavy work (torch) runs only here."""
