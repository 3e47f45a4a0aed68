"""Async jobs: durable transcriptions on a dramatiq queue in Redis, with callbacks.

- ``states``: the job states and their legal transitions;
- ``records``: a job's options and record; ``store``: records in Redis, and the caps on
  jobs not yet ended; ``owners``: whose a job is (the fingerprint of its API key);
- ``embedded``: the redis-server ``whisperd serve`` runs when no Redis URL is set;
- ``broker``: dramatiq's RedisBroker, queue names, on-demand queue maintenance;
- ``actors``: the transcribe, chunk and callback actors; ``runner``: handling their messages
  (states, retries, leases, the merge of a long job's chunks); ``work``: what one try does
  (transcribe in one go, split into chunks, transcribe a chunk); ``chunks``: a chunk's audio
  in Redis and the merge of results;
- ``callbacks``: OpenFaaS-style callback delivery with signatures and retries;
- ``runtime``: start and stop all of it in a server or a ``whisperd worker``.
"""
