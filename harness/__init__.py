"""Real parts for the tests, the benchmark and the demo: a private redis-server and the service as a real process.

One harness, so that what the tests prove and what the benchmark measures run on the same parts: a fix to how the
service is started or stopped (READY=1 on a socket the harness owns, SIGTERM, the log file) reaches both. It lives
outside the shipped package (the release tree is consumer/ and schemas/): nothing here runs on a host. Importable from
the project root: pytest.ini puts the root on the path, `python -m bench.run` and `python -m scripts.demo` start there.
"""

from .processes import REDIS_SERVER, ROOT, RedisServer, ServiceProcess, end_process, free_port, wait_until

__all__ = ["REDIS_SERVER", "ROOT", "RedisServer", "ServiceProcess", "end_process", "free_port", "wait_until"]
