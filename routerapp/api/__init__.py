"""The HTTP API: the native jobs API and the OpenAI-compatible endpoints."""
