"""Pydantic models: the job spec operators submit, and the API's request and response bodies."""
