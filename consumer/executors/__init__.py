"""Executor plugins. ``EXECUTOR=paper`` (default) or ``EXECUTOR=package.module:Class`` for an adapter of your own."""

from __future__ import annotations

import importlib

import redis

from ..config import Config, ConfigError
from .base import Executor, Order, OutcomeUnknown, Report
from .paper import PaperExecutor

__all__ = ["Executor", "Order", "OutcomeUnknown", "Report", "PaperExecutor", "load_executor"]


def load_executor(cfg: Config, client: redis.Redis) -> Executor:
    """Build the configured executor; an adapter class is called as ``Class(cfg, client)``."""
    if cfg.executor == "paper":
        venue = redis.Redis.from_url(cfg.paper_venue_url) if cfg.paper_venue_url else client
        return PaperExecutor(venue, cfg.paper_latency_ms, cfg.paper_fail_rate, cfg.idempotency_ttl_sec)
    module_name, _, class_name = cfg.executor.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"EXECUTOR={cfg.executor!r} cannot be loaded ({exc}); use 'paper' or 'module:Class'") from None
    executor = cls(cfg, client)
    if not isinstance(executor, Executor):
        raise ConfigError(f"EXECUTOR={cfg.executor!r} is not a consumer.executors.Executor")
    return executor
