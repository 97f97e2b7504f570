"""``python -m hypo.bench``: a worker process (``--worker MODE --spec F --result F``), or the same
as ``hypo bench ...``."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        import argparse

        from .workers import worker_main

        parser = argparse.ArgumentParser(prog="python -m hypo.bench --worker")
        parser.add_argument("--worker", required=True)
        parser.add_argument("--spec", required=True)
        parser.add_argument("--result", required=True)
        args = parser.parse_args(argv)
        return worker_main(args.worker, args.spec, args.result)
    from ..cli import main as cli_main

    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
