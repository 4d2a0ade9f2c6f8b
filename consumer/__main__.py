"""``python -m consumer``: run the execution service until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys

from . import logs
from .config import Config, ConfigError


def main() -> int:
    try:
        cfg = Config.from_env()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        logs.setup(cfg.pipeline_diag, cfg.log_file)
    except logs.LogFileError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from .service import Service, log

    try:
        service = Service(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if cfg.metrics_port:
        try:
            service.metrics.start(cfg.metrics_port, cfg.metrics_addr)
        except OSError as exc:
            print(f"config error: METRICS_PORT={cfg.metrics_port} cannot be served on {cfg.metrics_addr} ({exc.strerror})",
                  file=sys.stderr)
            return 2
    log.info(cfg.banner())
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
