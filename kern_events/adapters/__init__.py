"""Adapters that let agent frameworks keep their sessions in kern-events.

Each adapter is one module that imports its framework and nothing else imports it; install it with
the framework's extra (``pip install 'kern-events[openai-agents]'``), pinned to the release it is
tested against.
"""
