"""Adapters that let agent frameworks keep their state in kern-events.

Each adapter lives in its own module and is the only place that imports its framework, installed
with the matching extra (``pip install 'kern-events[langgraph]'`` for :mod:`kern_events.adapters.langgraph`,
``'kern-events[openai-agents]'`` for :mod:`kern_events.adapters.openai_agents`), pinned to the
release it is tested against. Importing this package imports no framework.
"""
