"""The web process: daphne's own command line, without Twisted's TLS layer.

    python -m mltrack.web --proxy-headers -b 0.0.0.0 -p 8000 mltrack.asgi:application

Twisted loads its TLS support (pyOpenSSL, and with it most of cryptography's
X.509 code) whenever pyOpenSSL is installed, and daphne's own requirements
(twisted[tls]) always install it: 5.5 MB of every web process's memory, for
nothing, since mltrack serves plain HTTP behind a proxy that terminates TLS
(README, "Several machines"). So the import is refused before daphne loads Twisted, and
daphne's `ssl:` endpoints are not available in this process.
"""

from __future__ import annotations

import sys


def main() -> None:
    # A None entry makes `import OpenSSL` raise ImportError, which is how
    # Twisted's tcp module learns that TLS is not available.
    sys.modules.setdefault("OpenSSL", None)
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
