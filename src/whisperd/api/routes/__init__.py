"""Route modules: openai (/v1/audio, /v1/models), language
(/v1/audio/language), compat (the seeds' endpoints), ops."""
