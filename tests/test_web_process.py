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
