from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from sessions.models import ApiToken

pytestmark = pytest.mark.django_db


def test_it_prints_a_working_token_on_its_last_line(alice):
    out = StringIO()
    call_command("create_api_token", "alice", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert ApiToken.objects.authenticate(raw).user == alice


def test_it_rejects_an_unknown_user():
    with pytest.raises(CommandError, match="No user named 'zoe'"):
        call_command("create_api_token", "zoe")
