"""The web process must stay light: scikit-learn is the worker's business."""

import subprocess
import sys


def test_the_asgi_app_and_urls_do_not_import_scikit_learn():
    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
        " 'mltrack.settings'); import mltrack.asgi; import mltrack.urls;"
        " import sessions.api, sessions.views, sessions.forms, sessions.tasks;"
        " print('sklearn' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_daphne_leaves_form_bodies_to_django():
    # Twisted would parse a form POST's body (a CSV upload) into request.args on
    # the event loop; daphne hands the raw body on and never reads them.
    code = (
        "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
        " 'mltrack.settings'); import mltrack.asgi;"
        " from types import SimpleNamespace;"
        " from twisted.web.test.requesthelper import DummyChannel;"
        " from daphne.http_protocol import WebRequest;"
        " channel = DummyChannel();"
        " channel.factory = SimpleNamespace(server=SimpleNamespace("
        "protocol_connected=lambda request: None));"
        " print(WebRequest(channel)._parsePOSTFormSubmission)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False"
