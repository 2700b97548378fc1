"""`python -m boxer.cli.zygote`: the lab backend's agent zygote as a process (boxer.backends.zygote).

Each child the zygote forks runs `boxer run ...` through the click command, exactly as a fresh
`python -m boxer run ...` would; this entry is what ties the two together, so that the backend
never imports the CLI."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from boxer.backends import zygote

PRELOAD = ("boxer.cli", "boxer.cli.run")


def run_boxer(args: list[str]) -> int:
    """Run `boxer ARGS...` in this process (a forked child) and return its exit status."""
    import boxer
    from boxer.cli import main as cli

    sys.argv = [os.path.join(os.path.dirname(boxer.__file__ or ""), "__main__.py"), *args]
    code: int = 0
    try:
        cli.main(args=args, prog_name="python -m boxer", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(zygote.main(run_boxer, PRELOAD))
