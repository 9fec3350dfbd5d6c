"""Command line: `aisfusion run | worker | import | demo | replay | simulate | shell`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from aisfusion import logs
from aisfusion.config import Config, load
from aisfusion.errors import AisFusionError, ConfigError

if TYPE_CHECKING:
    from aisfusion.app import Role

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "config.toml"


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of workers (0 or more), got {text!r}")
    return int(text)


def _instant(text: str) -> float:
    """A time: UNIX seconds, or ISO 8601 (UTC unless it names an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected UNIX seconds or an ISO 8601 time, got {text!r}"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"expected lines per second (> 0), got {text!r}")
    return rate


def _part(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with I < N, got {text!r}")
    return int(index), int(count)


def _import(config: Config, args: argparse.Namespace) -> int:
    from aisfusion.archive import report
    from aisfusion.archive.importer import Timing, import_files
    from aisfusion.archive.parts import run_parts
    from aisfusion.jetstream.workers import default_count

    jobs = 1 if "-" in args.files else (args.jobs or default_count())
    if args.part is None and jobs > 1:
        passed = [*_config_args(args), "--source", args.source]
        for flag, value in (
            ("--format", args.format),
            ("--assume-rate", args.assume_rate),
            ("--start-time", args.start_time),
        ):
            if value is not None:
                passed += [flag, str(value)]
        summary = run_parts(config, args.files, jobs, passed)
    else:
        first = args.part is None or args.part[0] == 0
        summary = uvloop.run(
            import_files(
                config,
                args.files,
                source=args.source,
                fmt=args.format,
                timing=Timing(args.assume_rate, args.start_time),
                progress=report.progress_bar() if first and sys.stderr.isatty() else None,
                part=args.part or (0, 1),
            )
        )
    print(report.as_json(summary) if args.json else report.render(summary), flush=True)
    if args.part is None:  # a part's errors are its parent's to tell
        for f in summary.files:
            if f.error is not None:
                print(f"aisfusion import: {f.name}: {f.error}", file=sys.stderr)
    return 0 if summary.ok else 1


def _overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` pairs; values are parsed leniently like environment values."""
    out: dict[str, dict[str, Any]] = {}
    problems = []
    for pair in pairs:
        path, sep, value = pair.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot:
            problems.append(f"--set {pair!r}: expected SECTION.KEY=VALUE")
            continue
        out.setdefault(section, {})[key] = value
    if problems:
        raise ConfigError(problems)
    return out


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    overrides = _overrides(args.set or [])
    # CLI values arrive as strings, like environment values: convert them leniently.
    env = dict(os.environ)
    for section, values in overrides.items():
        for key, value in values.items():
            env[f"AISFUSION_{section.upper()}__{key.upper()}"] = value
    return load(path, environ=env)


def _config_args(args: argparse.Namespace) -> list[str]:
    """The settings arguments of this command, for the worker processes it starts."""
    out = [] if args.config is None else ["--config", str(Path(args.config).absolute())]
    for pair in args.set or []:
        out += ["--set", pair]
    return out


async def _run(config: Config, role: Role = "direct", **options: Any) -> int:
    from aisfusion.app import Service

    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        # Only an operator's second Ctrl-C forces: a repeated SIGTERM (a process manager and
        # a wrapper both forwarding it) must not cut the graceful drain short.
        if stop.is_set():
            if sig is signal.SIGINT:
                log.error("second interrupt: stopping hard")
                os._exit(130)  # the embedded servers die with us (parent-death signal)
            return
        log.info("%s: stopping gracefully (Ctrl-C again to force)", sig.name)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    service = Service(config, role=role, **options)
    try:
        await service.start()
        stopped, failed = (
            asyncio.create_task(stop.wait()),
            asyncio.create_task(service.failed.wait()),
        )
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
    finally:
        await service.stop()
    if service.failure is not None:
        log.error("stopped: %s", service.failure)
        return 1
    return 0


def _receivers(args: argparse.Namespace) -> list[Any] | None:
    """`simulate`'s receiver flags as simulated receivers (None: one plain station)."""
    if not args.receivers and not args.fault:
        return None
    from aisfusion.traffic.receivers import receivers

    return receivers(
        args.receivers,
        fault=args.fault,
        loss=args.loss,
        noise_m=args.noise,
        delay_s=args.delay,
        duplicates=args.duplicates,
        skew_s=args.skew,
        prefix=args.station,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aisfusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"TOML settings file (default: ./{DEFAULT_CONFIG})")
        p.add_argument(
            "--set",
            action="append",
            metavar="SECTION.KEY=VALUE",
            help="override one setting (repeatable); beats environment and file",
        )

    run = sub.add_parser("run", help="run the service")
    with_config(run)
    run.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="worker processes on the JetStream log (default: workers.count, 0: one per core); "
        "0 with workers.mode=in_process runs without the log",
    )

    worker = sub.add_parser(
        "worker", help="one worker process on the JetStream log of a running `aisfusion run`"
    )
    with_config(worker)
    worker.add_argument("--id", default="", help="worker id (default: host-pid)")

    imp = sub.add_parser(
        "import",
        help="import archives (NMEA or CSV; .gz, .bz2, .zst; - for stdin) in event time",
    )
    with_config(imp)
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.add_argument("--format", choices=("nmea", "csv"), help="default: told by the header")
    imp.add_argument("--source", default="import", help="source name (default: import)")
    imp.add_argument(
        "--assume-rate",
        type=_rate,
        metavar="LINES_PER_S",
        help="time lines without a receive time at this rate (default with --start-time: 10)",
    )
    imp.add_argument(
        "--start-time",
        type=_instant,
        metavar="TIME",
        help="time of the first line without a receive time (UNIX s or ISO 8601; default "
        "with --assume-rate: the file's modification time less its lines at that rate)",
    )
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.add_argument(
        "--jobs",
        type=_count,
        metavar="N",
        help="processes deciding a share of the vessels each (default, and 0: one per core)",
    )
    imp.add_argument("--part", type=_part, help=argparse.SUPPRESS)  # one of the --jobs

    demo = sub.add_parser("demo", help="embedded servers + simulated receivers + summary")
    with_config(demo)
    demo.add_argument("--vessels", type=int, default=2000)
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    demo.add_argument("--rate", type=float, default=None, help="cap on lines/s")
    demo.add_argument("--seed", type=int, default=1)

    replay = sub.add_parser("replay", help="send a recorded NMEA file to a service over TCP")
    replay.add_argument("file", type=Path)
    replay.add_argument("--to", type=_endpoint, default=("127.0.0.1", 10110), metavar="HOST:PORT")
    replay.add_argument("--rate", type=float, default=None, help="lines/s (default: full speed)")

    sim = sub.add_parser("simulate", help="send simulated AIS traffic to a service over TCP")
    sim.add_argument("--to", type=_endpoint, default=("127.0.0.1", 10110), metavar="HOST:PORT")
    sim.add_argument("--vessels", type=int, default=1000)
    sim.add_argument("--duration", type=float, default=60.0, help="seconds")
    sim.add_argument("--rate", type=float, default=None, help="cap on lines/s")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--station", default="sim-rx", help="tag-block s: of the receiver")
    sim.add_argument(
        "--receivers", type=int, default=0, help="simulated receivers (0: one plain station)"
    )
    sim.add_argument(
        "--fault", choices=("offset", "clock", "jumps"), help="add one misbehaving receiver"
    )
    sim.add_argument("--loss", type=float, default=0.2, help="share of transmissions missed")
    sim.add_argument("--noise", type=float, default=0.0, help="position noise, metres")
    sim.add_argument("--delay", type=float, default=0.5, help="mean delivery delay, seconds")
    sim.add_argument("--duplicates", type=float, default=0.02, help="share delivered twice")
    sim.add_argument("--skew", type=float, default=0.0, help="receiver clock skew, seconds")
    sim.add_argument("--truth", type=Path, help="write the true positions to this CSV file")

    shell = sub.add_parser(
        "shell", help="introspection shell on a running service (over its control socket)"
    )
    with_config(shell)
    shell.add_argument(
        "-c", dest="one_command", metavar="COMMAND", help='run one command and exit, e.g. "status"'
    )
    shell.add_argument(
        "--socket", type=Path, help="control socket (default: control.socket of the settings)"
    )
    shell.add_argument("--json", action="store_true", help="with -c: print the reply as JSON")
    shell.add_argument("--history", type=Path, help="history file (default: ~/.aisfusion_history)")

    args = parser.parse_args(argv)
    try:
        if args.command == "shell":
            from aisfusion.ops.shell import run_shell

            socket_path = args.socket
            if socket_path is None:
                configured = _load(args).control.socket
                if not configured:
                    print(
                        "aisfusion shell: control.socket is disabled; pass --socket",
                        file=sys.stderr,
                    )
                    return 2
                socket_path = Path(configured)
            return run_shell(
                socket_path, command=args.one_command, as_json=args.json, history=args.history
            )
        if args.command == "run":
            if args.workers is not None:
                args.set = [*(args.set or []), f"workers.count={args.workers}"]
            config = _load(args)
            logs.configure(config.log.level)
            if config.workers.mode == "in_process":
                return uvloop.run(_run(config))
            return uvloop.run(_run(config, "front", worker_args=_config_args(args)))
        if args.command == "worker":
            config = _load(args)
            logs.configure(config.log.level)
            return uvloop.run(_run(config, "worker", worker_id=args.id))
        if args.command == "import":
            config = _load(args)
            # Errors only: the progress bar and the summary say how it goes (a live feed's
            # warnings, such as sources demoted, would bury the bar).
            logs.configure("ERROR")
            return _import(config, args)
        if args.command == "demo":
            from aisfusion.traffic.demo import run_demo

            config = _load(args)
            logs.configure("WARNING")
            summary = uvloop.run(
                run_demo(
                    config,
                    vessels=args.vessels,
                    duration_s=args.duration,
                    rate=args.rate,
                    seed=args.seed,
                )
            )
            return 0 if summary["positions_stored"] > 0 else 1
        logs.configure("INFO")
        from aisfusion.traffic import replay as rp

        def progress(sent: int) -> None:
            print(f"sent {sent} lines", file=sys.stderr, flush=True)

        if args.command == "replay":
            host, port = args.to
            sent = uvloop.run(
                rp.send_lines(
                    rp.read_file_lines(args.file), host, port, rate=args.rate, progress=progress
                )
            )
        else:
            host, port = args.to
            sent = uvloop.run(
                rp.simulate(
                    host,
                    port,
                    vessels=args.vessels,
                    rate=args.rate,
                    duration_s=args.duration,
                    seed=args.seed,
                    station=args.station,
                    progress=progress,
                    receivers=_receivers(args),
                    truth=args.truth,
                )
            )
        print(f"sent {sent} lines", flush=True)
        return 0
    except ConfigError as exc:
        print(f"aisfusion: {exc}", file=sys.stderr)
        return 2
    except AisFusionError as exc:
        print(f"aisfusion: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"aisfusion: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
