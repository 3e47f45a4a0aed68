"""Route modules: openai (/v1/audio, /v1/models), compat (the seeds' endpoints), ops."""
