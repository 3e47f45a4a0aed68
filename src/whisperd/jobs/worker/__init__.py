"""What a worker runs: ``runner`` handles each message of a job or a chunk (states,
retries, leases, the merge of a long job's chunks), deciding with the pure functions of
``decisions``; ``work`` is what one try does (transcribe in one go, split into chunks,
transcribe a chunk); ``main`` is ``whisperd worker`` and its metrics exporter.
"""
