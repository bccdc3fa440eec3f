"""Adapters that let agent frameworks keep their state in kern-events.

Each adapter lives in its own module and is the only place that imports its framework, installed
with the matching extra (``pip install 'kern-events[langgraph]'`` for :mod:`kern_events.adapters.langgraph`,
``[agno]``, ``[openai-agents]``, ``[adk]``), pinned to the release whose own tests it passes.
Importing this package imports no framework.
"""
