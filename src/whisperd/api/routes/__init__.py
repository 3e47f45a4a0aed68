"""Route modules: openai (/v1/audio, /v1/models), language (/v1/audio/language), compat
(the OpenFaaS-style function, /translate/ and the /check-* probes), jobs, realtime, ops."""
