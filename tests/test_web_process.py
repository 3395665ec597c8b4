"""The web process as daphne loads it, in a fresh interpreter each time."""

import subprocess
import sys

SETUP = (
    "import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
    " 'mltrack.settings'); import mltrack.asgi; "
)


def last_line_printed(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SETUP + code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def test_the_asgi_app_and_urls_do_not_import_scikit_learn():
    # The web process must stay light: scikit-learn is the worker's business.
    code = (
        "import mltrack.urls;"
        " import sessions.api, sessions.views, sessions.forms, sessions.tasks;"
        " print('sklearn' in sys.modules)"
    )
    assert last_line_printed(code) == "False"


def test_daphne_leaves_form_bodies_to_django():
    # Twisted would parse a form POST's body (a CSV upload) into request.args on
    # the event loop; daphne hands the raw body on and never reads them.
    code = (
        "from types import SimpleNamespace;"
        " from twisted.web.test.requesthelper import DummyChannel;"
        " from daphne.http_protocol import WebRequest;"
        " channel = DummyChannel();"
        " channel.factory = SimpleNamespace(server=SimpleNamespace("
        "protocol_connected=lambda request: None));"
        " print(WebRequest(channel)._parsePOSTFormSubmission)"
    )
    assert last_line_printed(code) == "False"


def test_the_web_process_runs_daphne_without_twisteds_tls_layer():
    # mltrack.web refuses pyOpenSSL before daphne loads Twisted (5.5 MB of every
    # web process); what it then runs is daphne's own command line.
    code = (
        "import runpy, sys\n"
        "sys.argv = ['mltrack.web', '--help']\n"
        "try:\n"
        "    runpy.run_module('mltrack.web', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('daphne.server' in sys.modules, sys.modules.get('OpenSSL'),"
        " 'twisted.internet._newtls' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "usage:" in result.stdout  # daphne's own help
    assert result.stdout.strip().splitlines()[-1] == "True None False"
