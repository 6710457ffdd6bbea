"""``python -m hoopctl.replay FILE [options]``: play, list or export a local recording."""

from __future__ import annotations

import argparse
import sys

from hoopctl.errors import EXIT_ERROR, HoopError
from hoopctl.replay import FORMATS, Command, commands, export, format_offset, play
from hoopctl.replay.errors import RecordingDamaged


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hoopctl.replay",
        description="Play an asciicast recording in the terminal (keys: space pause, + - speed, "
        "right skip 5 s, left back 5 s, n next command, q quit).",
    )
    parser.add_argument("file", help="an asciicast v2 (or v3) recording")
    parser.add_argument("--speed", type=float, default=1.0, help="0.1 to 64 (default 1)")
    parser.add_argument("--idle-limit", type=float, metavar="SECONDS", help="longest pause")
    parser.add_argument("--at", metavar="OFFSET", help="start at 90, 1m30s, 1:30 or 1:02:03")
    parser.add_argument("--grep", metavar="REGEX", help="start at the first match")
    parser.add_argument(
        "--follow", action="store_true", help="the file is still being written: keep playing"
    )
    parser.add_argument("--commands", action="store_true", help="print the command timeline")
    parser.add_argument("--format", choices=FORMATS, help="write the recording to stdout")
    parser.add_argument("--no-keys", action="store_true", help="do not read keys from stdin")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.commands:
            try:
                found = commands(args.file)
            except RecordingDamaged as exc:
                _print_commands(exc.partial or [])
                raise
            _print_commands(found)
            return 0
        if args.format:
            export(args.file, args.format, sys.stdout)
            return 0
        return play(
            args.file,
            speed=args.speed,
            idle_limit=args.idle_limit,
            at=args.at,
            grep=args.grep,
            follow=True if args.follow else None,
            keys=not args.no_keys,
        )
    except HoopError as exc:
        sys.stdout.flush()
        print(f"hoopctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hoopctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


def _print_commands(found: list[Command]) -> None:
    for command in found:
        text = command.text.replace("\n", "\\n")
        print(f"{format_offset(command.time):>10}  {command.kind:<8} {text}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
