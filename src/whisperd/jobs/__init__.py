"""Async jobs: durable transcriptions on a dramatiq queue in Redis, with callbacks.

Layers, each using only those below it:

- ``service``: what the API calls (submit, get, cancel, list, queue stats), on
  ``process``: the start and stop of the jobs machinery in a server or a ``whisperd worker``
  (Redis, the queue, the runner, the janitor);
- ``worker``: what a worker runs: ``worker.runner`` handles each delivery of a job's or a
  chunk's message (states, retries, leases, the merge of a long job's chunks), deciding with
  the pure functions of ``worker.decisions``; ``worker.work`` is what one try does;
  ``worker.main`` is ``whisperd worker`` and its metrics exporter;
- ``callbacks``: OpenFaaS-style callback delivery with signatures and retries;
- ``queue``: the broker and the actors as one object (declaring them, sending messages,
  consuming); ``dramatiq_adapter``: the only code that touches dramatiq's internals;
- ``store``: records in Redis (keys, the Lua scripts in ``lua/``), and the caps on jobs not
  yet ended; ``chunks``: a chunk's audio and the merge of results; ``records``, ``states``,
  ``owners``: a job's record, its states and legal transitions, whose it is;
- ``embedded``: the redis-server ``whisperd serve`` runs when no Redis URL is set.

Retries have one owner: every retry is a message we send again with a delay from
:func:`whisperd.jobs.queue.backoff_seconds`: the runner's for a failed attempt of a job or a
chunk (``job_max_retries``), the callback sender's for a failed delivery
(``callback_max_retries``), and the queue's for a handler that raised (Redis lost mid-job).
dramatiq itself never retries (no ``Retries`` middleware).

Leases have one owner: whether a job's or a chunk's worker is alive is the store's lease
key, which that worker renews every poll interval and which lapses before dramatiq's
heartbeat timeout. dramatiq's heartbeats only make the transport redeliver the messages a
dead worker held; the runner then reads the lease to decide what the delivery means.
"""
